package backfill

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestPace: the governor's steps are proportional to how far the impact is
// from the budget, so it settles near the budget instead of swinging
// between no rest and the longest one.
func TestPace(t *testing.T) {
	const budget = 0.4
	g := &governor{budget: budget, target: startBatch, rest: 1}

	// far over the budget: batches shorten, but never below minBatch
	for range 20 {
		g.pace(4 * budget)
	}
	assert.Equal(t, minBatch, g.target)
	assert.Equal(t, maxRest, g.rest, "then rests grow to their longest")

	// a little over: the rest grows a little
	g.rest = 2
	g.pace(1.1 * budget)
	assert.InDelta(t, 2.1, g.rest, 0.05, "10% over the budget: about 5% more rest")
	g.rest = 2
	g.pace(3 * budget)
	assert.InDelta(t, 3, g.rest, 0.01, "twice the budget or more: half as much rest again")

	// a little under: the rest barely shrinks; idle: it shrinks by a fifth
	g.rest = 2
	g.pace(0.9 * budget)
	assert.InDelta(t, 1.96, g.rest, 0.01)
	g.rest = 2
	g.pace(0)
	assert.InDelta(t, 1.6, g.rest, 0.01)

	// well under with no rest left: batches grow back, up to maxBatch
	g.rest = 0.04
	g.pace(0)
	assert.Zero(t, g.rest)
	for range 20 {
		g.pace(0)
	}
	assert.Equal(t, maxBatch, g.target)
}

// TestPaceSettles: against a workload whose slowdown follows the job's
// share of time (with the window-to-window noise measured on this
// machine), the rest settles where the impact meets the budget rather than
// swinging between none and the longest.
func TestPaceSettles(t *testing.T) {
	const budget = 0.4
	g := &governor{budget: budget, target: minBatch}
	// impact = 1.2 × duty: the budget is met at a duty of 1/3, a rest of 2
	noise := []float64{0.8, 1.25, 1, 0.9, 1.15, 1, 1.3, 0.75, 1.05, 0.95}
	var rests []float64
	for i := range 300 {
		duty := 1 / (1 + g.rest)
		impact := 1.2 * duty * noise[i%len(noise)]
		g.impact = 0.5*g.impact + 0.5*impact
		g.pace(g.impact)
		if i >= 100 {
			rests = append(rests, g.rest)
		}
	}
	lo, hi := rests[0], rests[0]
	for _, r := range rests {
		lo, hi = min(lo, r), max(hi, r)
	}
	assert.Greater(t, lo, 0.8, "never back to back")
	assert.Less(t, hi, 4.0, "never the longest rest")
}

// TestFelt: the probe samples latency at even times, but a writer that
// sends its next transaction when the last one returns (SPIRE's servers,
// pgbench) makes more calls while the server is fast. What its calls feel
// on average — and what its throughput loses — is the harmonic mean of the
// samples: half the time at twice the latency is a third slower per call
// (throughput 75%), not half.
func TestFelt(t *testing.T) {
	ms := time.Millisecond
	var s []time.Duration
	for range 50 {
		s = append(s, ms, 2*ms)
	}
	assert.InDelta(t, float64(4*ms/3), float64(felt(s)), float64(10*time.Microsecond))

	// one stall among fifty calls is not the backfill's pace
	s = slices.Repeat([]time.Duration{ms}, 49)
	s = append(s, 100*ms)
	assert.Less(t, felt(s), ms*103/100)

	assert.Zero(t, felt(nil))
}
