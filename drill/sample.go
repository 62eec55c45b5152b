package drill

import (
	"math"
	"math/rand/v2"
	"sort"

	"github.com/tenantvault/tenantvault/manifest"
)

// sizeShare is the part of each tenant's sampling weight that follows its
// size; the rest is the same for every tenant.
const sizeShare = 0.5

// sample picks n of a set's tenants, the same ones for the same tenants and
// seed, and returns their IDs sorted.
//
// The scheme is weighted random sampling without replacement (Efraimidis and
// Spirakis, 2006): tenant i gets the weight
//
//	w_i = sizeShare·size_i/Σsize + (1-sizeShare)·1/N
//
// (size is the uncompressed bytes of its rows, N the number of tenants), and
// the key -ln(U_i)/w_i with U_i uniform in (0, 1]; the n smallest keys win.
// That is the same as drawing tenants one at a time, each with probability
// proportional to its weight among those not drawn yet. The size-proportional
// half makes the large tenants, whose restore is slowest and most likely to
// break a budget, appear often; the uniform half keeps a fleet of small tenants
// from being crowded out by one huge one, so every tenant is drilled now and
// then. When no tenant holds any bytes, the weights are uniform.
//
// The random numbers come from a PCG generator seeded with seed and are drawn
// in tenant ID order, so the result depends only on the tenants and the seed.
func sample(tenants []manifest.Tenant, n int, seed int64) []string {
	sorted := make([]manifest.Tenant, len(tenants))
	copy(sorted, tenants)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })
	if n >= len(sorted) {
		ids := make([]string, len(sorted))
		for i, t := range sorted {
			ids[i] = t.ID
		}
		return ids
	}
	var total float64
	for _, t := range sorted {
		total += float64(max(t.Size, 0))
	}
	// The second PCG word is fixed so that a seed alone names a sample.
	rng := rand.New(rand.NewPCG(uint64(seed), 0x7465_6e61_6e74_7661)) // "tenantva"
	type keyed struct {
		id  string
		key float64
	}
	keys := make([]keyed, len(sorted))
	uniform := 1 / float64(len(sorted))
	for i, t := range sorted {
		w := uniform
		if total > 0 {
			w = sizeShare*float64(max(t.Size, 0))/total + (1-sizeShare)*uniform
		}
		u := 1 - rng.Float64() // (0, 1]: ln never sees 0
		keys[i] = keyed{id: t.ID, key: -math.Log(u) / w}
	}
	sort.SliceStable(keys, func(i, j int) bool { return keys[i].key < keys[j].key })
	ids := make([]string, n)
	for i := range ids {
		ids[i] = keys[i].id
	}
	sort.Strings(ids)
	return ids
}

// newSeed returns a random seed for a run that was given none. It is never 0,
// which means "pick one", so a printed seed always repeats its run.
func newSeed() int64 {
	return rand.Int64N(math.MaxInt64-1) + 1
}
