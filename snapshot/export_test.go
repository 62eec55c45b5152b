package snapshot

// SetSpillAt lets tests make every table spill its chunk references.
func SetSpillAt(n int) (restore func()) {
	old := spillAt
	spillAt = n
	return func() { spillAt = old }
}
