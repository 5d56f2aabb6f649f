package demo

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ferrysync/ferry/test/cluster"
)

// changedBytes is what round 2 of writeDatabase adds.
const changedBytes = 1<<20 + 64

// writeDatabase writes what a database volume holds (round 1), or a change
// to it (round 2: a new binlog segment and a row appended to a table).
func writeDatabase(r *runner, dir string, round int) {
	must := func(err error) { r.check(err, "write data") }
	data := filepath.Join(dir, "mysql")
	if round == 1 {
		must(os.MkdirAll(filepath.Join(data, "shop"), 0o750))
		for i, table := range []string{"orders", "customers", "items"} {
			writeRandom(r, filepath.Join(data, "shop", table+".ibd"), int64(4+i*3)<<20)
		}
		must(os.WriteFile(filepath.Join(data, "my.cnf"), []byte("[mysqld]\ndatadir=/var/lib/mysql\n"), 0o640))
		must(os.Chown(filepath.Join(data, "my.cnf"), 999, 999))
		must(os.Link(filepath.Join(data, "my.cnf"), filepath.Join(data, "my.cnf.bak")))
		must(os.Symlink("binlog.000001", filepath.Join(data, "binlog.current")))
		f, err := os.Create(filepath.Join(data, "ibtmp1"))
		must(err)
		must(f.Truncate(64 << 20)) // sparse: 64 MiB that take no space
		must(f.Close())
	}
	writeRandom(r, filepath.Join(data, fmt.Sprintf("binlog.%06d", round)), 1<<20)
	f, err := os.OpenFile(filepath.Join(data, "shop", "orders.ibd"), os.O_APPEND|os.O_WRONLY, 0)
	must(err)
	_, err = f.Write([]byte(strings.Repeat("r", 64)))
	must(err)
	must(f.Close())
}

func writeRandom(r *runner, path string, n int64) {
	f, err := os.Create(path)
	r.check(err, "create "+path)
	_, err = io.CopyN(f, rand.Reader, n)
	r.check(err, "write "+path)
	r.check(f.Close(), "close "+path)
}

// sentBytes adds up what the source cluster's agents sent for the demo's
// source, from their /metrics.
func sentBytes(r *runner, c *cluster.Cluster) float64 {
	total := 0.0
	for _, n := range c.Nodes {
		resp, err := http.Get("http://" + n.Net.IP + ":9810/metrics")
		r.check(err, "read metrics")
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			if strings.HasPrefix(l, "ferry_agent_bytes_total{") && strings.Contains(l, `direction="sent"`) &&
				strings.Contains(l, `obj_name="database-source"`) {
				v, err := strconv.ParseFloat(l[strings.LastIndex(l, " ")+1:], 64)
				r.check(err, "parse metric")
				total += v
			}
		}
		resp.Body.Close()
	}
	return total
}
