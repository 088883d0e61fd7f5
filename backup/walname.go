package backup

import (
	"fmt"
	"regexp"
	"strconv"
)

// walPrefix is the store directory of archived WAL: wal/NAME, one object
// per file PostgreSQL archives.
const walPrefix = "wal/"

func walKey(name string) string { return walPrefix + name }

// WALKind is what an archived file is.
type WALKind int

const (
	// WALSegment is a complete WAL segment (000000010000000000000003).
	WALSegment WALKind = iota + 1
	// WALPartial is the last, incomplete segment of a timeline that a
	// promotion ended (000000010000000000000003.partial).
	WALPartial
	// WALBackupHistory is a base backup's history file
	// (000000010000000000000003.00000028.backup).
	WALBackupHistory
	// WALTimelineHistory is a timeline history file (00000002.history).
	WALTimelineHistory
)

// WALName is a parsed archived file name.
type WALName struct {
	Name string
	Kind WALKind
	TLI  uint32
	// Log and Seg are the segment's two halves (XXXXXXXX YYYYYYYY); zero
	// for timeline history files.
	Log, Seg uint32
}

var walNameRE = regexp.MustCompile(`^([0-9A-F]{8})(?:([0-9A-F]{8})([0-9A-F]{8})(\.partial|\.[0-9A-F]{8}\.backup)?|\.history)$`)

// ParseWALName reads the names PostgreSQL gives the files it archives. Any
// other name is not a WAL file: wal push refuses it, prune leaves it alone.
func ParseWALName(name string) (WALName, bool) {
	m := walNameRE.FindStringSubmatch(name)
	if m == nil {
		return WALName{}, false
	}
	tli, _ := strconv.ParseUint(m[1], 16, 32)
	w := WALName{Name: name, TLI: uint32(tli)}
	if m[2] == "" {
		w.Kind = WALTimelineHistory
		return w, tli > 0
	}
	lg, _ := strconv.ParseUint(m[2], 16, 32)
	sg, _ := strconv.ParseUint(m[3], 16, 32)
	w.Log, w.Seg = uint32(lg), uint32(sg)
	switch m[4] {
	case "":
		w.Kind = WALSegment
	case ".partial":
		w.Kind = WALPartial
	default:
		w.Kind = WALBackupHistory
	}
	return w, tli > 0
}

// SegNo is the segment's number for a segment size (bytes).
func (w WALName) SegNo(segSize int64) uint64 {
	return uint64(w.Log)*segsPerLog(segSize) + uint64(w.Seg)
}

// segsPerLog is how many segments one "log" (the XXXXXXXX half) holds.
func segsPerLog(segSize int64) uint64 {
	if segSize <= 0 {
		segSize = defaultSegSize
	}
	return 0x100000000 / uint64(segSize)
}

// defaultSegSize is initdb's default --wal-segsize.
const defaultSegSize = 16 << 20

// SegmentName is the file name of segment segNo on timeline tli.
func SegmentName(tli uint32, segNo uint64, segSize int64) string {
	per := segsPerLog(segSize)
	return fmt.Sprintf("%08X%08X%08X", tli, segNo/per, segNo%per)
}

// LSN is a WAL position.
type LSN uint64

// ParseLSN reads PostgreSQL's text form, 16/B374D848.
func ParseLSN(s string) (LSN, error) {
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil || fmt.Sprintf("%X/%X", hi, lo) != normalizeLSN(s) {
		return 0, fmt.Errorf("invalid LSN %q: want the form 16/B374D848", s)
	}
	return LSN(uint64(hi)<<32 | uint64(lo)), nil
}

func normalizeLSN(s string) string {
	var hi, lo uint32
	_, _ = fmt.Sscanf(s, "%X/%X", &hi, &lo)
	return fmt.Sprintf("%X/%X", hi, lo)
}

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// SegNo is the segment holding l.
func (l LSN) SegNo(segSize int64) uint64 {
	if segSize <= 0 {
		segSize = defaultSegSize
	}
	return uint64(l) / uint64(segSize)
}

// MarshalText writes the text form.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads the text form.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}
