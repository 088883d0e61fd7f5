package backup

// LockKey is the advisory lock key a backup holds, for tests.
const LockKey = lockKey
