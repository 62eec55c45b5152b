package datagen

import (
	"math/bits"
	"math/rand/v2"
)

// rng draws numbers from a PCG. It is used instead of rand.Rand because
// math/rand/v2 promises a stable output only for the PCG stream itself, not
// for how Rand's methods turn it into numbers: the data must not change with
// the Go release. Calling the PCG directly also saves an interface call per
// number.
type rng struct{ pcg rand.PCG }

func (r *rng) Uint64() uint64 { return r.pcg.Uint64() }

// Int64N returns a number in [0, n), n > 0, by Lemire's multiply-shift
// without the rejection step: the bias, at most n/2^64, does not matter here.
func (r *rng) Int64N(n int64) int64 {
	hi, _ := bits.Mul64(r.pcg.Uint64(), uint64(n))
	return int64(hi)
}

func (r *rng) IntN(n int) int { return int(r.Int64N(int64(n))) }

// Percent returns a number in [0, 100).
func (r *rng) Percent() int { return r.IntN(100) }

// Skewed returns a number in [0, n) biased towards 0: the smaller of two
// draws, so index 0 is about twice as likely as the average.
func (r *rng) Skewed(n int) int { return min(r.IntN(n), r.IntN(n)) }

// Perm returns a random permutation of [0, n) (Fisher-Yates).
func (r *rng) Perm(n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	for i := n - 1; i > 0; i-- {
		j := r.IntN(i + 1)
		p[i], p[j] = p[j], p[i]
	}
	return p
}
