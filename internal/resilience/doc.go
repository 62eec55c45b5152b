// Package resilience holds the fault-injection suite (S3 resets, errors and timeouts, PostgreSQL sessions terminated, a full disk) and the end-to-end encryption benchmark, run against the real PostgreSQL and MinIO.
package resilience
