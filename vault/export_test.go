package vault

// SetCatalogFanout makes catalogs cover n sets (or catalogs) for the
// duration of a test.
func SetCatalogFanout(n int) (restore func()) {
	old := catalogFanout
	catalogFanout = n
	return func() { catalogFanout = old }
}
