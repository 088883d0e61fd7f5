package pgcluster

// DisableParentDeathSignal lets a test leave an orphaned postmaster behind.
func DisableParentDeathSignal() { pdeathsig = 0 }
