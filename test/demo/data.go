package demo

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferrysync/ferry/test/harness"
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
			harness.WriteRandom(r, filepath.Join(data, "shop", table+".ibd"), int64(4+i*3)<<20)
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
	harness.WriteRandom(r, filepath.Join(data, fmt.Sprintf("binlog.%06d", round)), 1<<20)
	f, err := os.OpenFile(filepath.Join(data, "shop", "orders.ibd"), os.O_APPEND|os.O_WRONLY, 0)
	must(err)
	_, err = f.Write([]byte(strings.Repeat("r", 64)))
	must(err)
	must(f.Close())
}

// sentBytes adds up what the source cluster's agents sent for the demo's
// source, from their /metrics.
func sentBytes(agents []*harness.Proc) float64 {
	total := 0.0
	for _, a := range agents {
		if v := a.Metric("ferry_agent_bytes_total", map[string]string{"direction": "sent", "obj_name": "database-source"}); v > 0 {
			total += v
		}
	}
	return total
}
