package vault

// SetCatalogFanout makes catalogs cover n sets (or catalogs) for the
// duration of a test.
func SetCatalogFanout(n int) (restore func()) {
	old := catalogFanout
	catalogFanout = n
	return func() { catalogFanout = old }
}

// WriteSegmentsV1 makes v write change segments as builds before
// per-tenant keys did: version 1, every stream sealed with the segment's
// own data key.
func WriteSegmentsV1(v *Vault) { v.segmentsV1 = true }
