package drill

import (
	"fmt"
	"slices"
	"testing"

	"github.com/tenantvault/tenantvault/manifest"
)

// fleet is one huge tenant among many small ones, as real fleets are.
func fleet() []manifest.Tenant {
	ts := []manifest.Tenant{{ID: "huge", Size: 1 << 30}}
	for i := range 49 {
		ts = append(ts, manifest.Tenant{ID: fmt.Sprintf("small-%02d", i), Size: 1 << 10})
	}
	return ts
}

func TestDrillSampleIsRepeatable(t *testing.T) {
	ts := fleet()
	a := sample(ts, 5, 42)
	if len(a) != 5 || !slices.IsSorted(a) || len(slices.Compact(slices.Clone(a))) != 5 {
		t.Fatalf("sample = %q: want 5 distinct IDs, sorted", a)
	}
	// The order tenants come in does not matter, only the seed.
	rev := slices.Clone(ts)
	slices.Reverse(rev)
	if b := sample(rev, 5, 42); !slices.Equal(a, b) {
		t.Fatalf("same seed, other order: %q, then %q", a, b)
	}
	differ := false
	for seed := int64(1); seed < 20 && !differ; seed++ {
		differ = !slices.Equal(a, sample(ts, 5, seed))
	}
	if !differ {
		t.Fatal("every seed gives the same sample")
	}
}

func TestDrillSampleAll(t *testing.T) {
	ts := []manifest.Tenant{{ID: "b"}, {ID: "a"}, {ID: "c"}}
	for _, n := range []int{3, 10} {
		if got := sample(ts, n, 1); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Fatalf("sample(%d of 3) = %q", n, got)
		}
	}
}

// TestDrillSampleWeights checks the scheme's promise over many seeds: the huge
// tenant is drilled far more often than its uniform share (5 of 50 = 10%),
// yet small tenants are not crowded out, and every one comes up.
func TestDrillSampleWeights(t *testing.T) {
	ts := fleet()
	const runs = 2000
	count := map[string]int{}
	for seed := int64(1); seed <= runs; seed++ {
		for _, id := range sample(ts, 5, seed) {
			count[id]++
		}
	}
	// Its weight is ½ + ½/50 = 0.51, so it is nearly always among five.
	if share := float64(count["huge"]) / runs; share < 0.9 {
		t.Errorf("huge tenant in %.0f%% of samples, want > 90%%", share*100)
	}
	for _, tn := range ts[1:] {
		// Each small one has weight ≈ 0.01: about 4 of 49 slots each run.
		if share := float64(count[tn.ID]) / runs; share < 0.04 || share > 0.13 {
			t.Errorf("%s in %.1f%% of samples, want about 8%%", tn.ID, share*100)
		}
	}
}

func TestDrillSampleWithoutSizes(t *testing.T) {
	ts := []manifest.Tenant{{ID: "a"}, {ID: "b"}, {ID: "c"}, {ID: "d"}}
	count := map[string]int{}
	for seed := int64(1); seed <= 400; seed++ {
		for _, id := range sample(ts, 1, seed) {
			count[id]++
		}
	}
	for _, tn := range ts {
		if count[tn.ID] < 60 || count[tn.ID] > 140 {
			t.Errorf("uniform weights: %s drawn %d of 400 times", tn.ID, count[tn.ID])
		}
	}
}

func TestDrillSeedIsNeverZero(t *testing.T) {
	for range 1000 {
		if newSeed() <= 0 {
			t.Fatal("seed <= 0: 0 means pick one, and a printed seed must repeat its run")
		}
	}
}
