package main

import (
	"fmt"
	"sync"
	"time"
)

// progress redraws one status line on stderr twice a second while a
// command runs, when stderr is a terminal; the returned func clears it.
func (a *app) progress(line func() string) (stop func()) {
	if !terminal(a.stderr) || a.jsonOut {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprint(a.stderr, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprintf(a.stderr, "\r\033[K%s", line())
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}
