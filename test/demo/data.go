package demo

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/ferrysync/ferry/test/cluster"
)

// changedBytes is what round 2 of databaseScript adds.
const changedBytes = 1<<20 + 64

// databaseScript is what the application pod runs on the volume: what a
// database volume holds (round 1), or a change to it (round 2 and later: a
// new binlog segment and a row appended to a table).
func databaseScript(round int) string {
	script := "set -e; d=/data/mysql; "
	if round == 1 {
		script += `mkdir -p $d/shop && chmod 750 $d $d/shop; ` +
			`head -c 4194304 /dev/urandom > $d/shop/orders.ibd; head -c 7340032 /dev/urandom > $d/shop/customers.ibd; ` +
			`head -c 10485760 /dev/urandom > $d/shop/items.ibd; ` +
			`printf '[mysqld]\ndatadir=/var/lib/mysql\n' > $d/my.cnf; chmod 640 $d/my.cnf; chown 999:999 $d/my.cnf; ` +
			`ln $d/my.cnf $d/my.cnf.bak; ln -s binlog.000001 $d/binlog.current; truncate -s 64M $d/ibtmp1; ` +
			`sqlite3 $d/app.db 'create table orders(id int, item text); insert into orders values (1, "ferry");'; `
	}
	return script + fmt.Sprintf(`head -c 1048576 /dev/urandom > $d/binlog.%06d; head -c 64 /dev/zero | tr '\0' r >> $d/shop/orders.ibd`, round)
}

// sentBytes adds up what the source cluster's agents sent for the demo's
// source, from their /metrics on the nodes' addresses.
func sentBytes(r *runner, c *cluster.Cluster) float64 {
	total := 0.0
	for _, n := range c.Nodes {
		resp, err := http.Get("http://" + n.Net.IP + ":9810/metrics")
		r.check(err, "agent metrics")
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "ferry_agent_bytes_total{") && strings.Contains(line, `direction="sent"`) &&
				strings.Contains(line, `obj_name="database-source"`) {
				v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
				r.check(err, "agent metrics")
				total += v
			}
		}
		resp.Body.Close()
	}
	return total
}
