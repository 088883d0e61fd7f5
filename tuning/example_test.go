package tuning_test

import (
	"fmt"

	"github.com/spiredb/spiredb/tuning"
)

// Size PostgreSQL for SPIRE: 3 spire-servers (max_open_conns 100 each) on
// a 16 GiB, 4-CPU SSD machine.
func ExampleRecommend() {
	ram, err := tuning.ParseSize("16GB")
	if err != nil {
		panic(err)
	}
	r, err := tuning.Recommend(tuning.Inputs{RAM: ram, CPUs: 4, SpireServers: 3})
	if err != nil {
		panic(err)
	}
	for _, name := range []string{"shared_buffers", "max_connections", "wal_log_hints"} {
		s, _ := r.Get(name)
		fmt.Println(s.Name, "=", s.Value)
	}
	// Output:
	// shared_buffers = 4GB
	// max_connections = 320
	// wal_log_hints = on
}
