package backup

import "github.com/spiredb/spiredb/pg"

// LockKey is the advisory lock key a backup holds, for tests.
var LockKey = pg.AdvisoryKey(lockName)

// ScratchComment is the comment that marks a scratch database as a run's
// own, for tests.
var ScratchComment = scratchComment
