package snapshot

// SetSpillAt lets tests make every table spill its chunk references.
func SetSpillAt(n int) (restore func()) {
	old := spillAt
	spillAt = n
	return func() { spillAt = old }
}

// SetSortMem sets the sorted export's arena size (bytes per worker), so a
// test can force every table through run files.
func SetSortMem(n int) (restore func()) {
	old := sortMem
	sortMem = n
	return func() { sortMem = old }
}

// SortedExports counts tables exported through the client-side sort, and
// of them those routed through a (key, tenant) map.
func SortedExports() (sorted, routed int64) { return sortedExports.Load(), routedExports.Load() }
