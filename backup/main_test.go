package backup_test

import (
	"testing"

	"github.com/spiredb/spiredb/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
