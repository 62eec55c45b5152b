// Package triage answers the first question of an incident, which tenants were hit: it compares a live database with a snapshot set (diff) and sums up the change log over a window (changes), so its output can feed restore.
package triage
