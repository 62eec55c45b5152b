package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/vbauerster/cupwriter"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// The progress display of the long commands (restore, snapshot, verify,
// drill): one mpb bar on stderr with totals, rate and ETA, drawn only
// when stderr is a terminal and --json is not given. While it runs, log
// lines and notes go through mpb, which prints them above the bar and
// redraws the bar below them, so that nothing tears the line.
//
// mpb rather than progressbar/v3: mpb's container is an io.Writer that
// prints above its bars (our logs go there), and its bars take a total that
// grows while they run (a snapshot learns its tables as it goes) and only
// complete when told to.

// barCommands draw a progress bar on a terminal. There their info lines
// (one per tenant restored, ...) would only repeat what the bar and the
// final table say, so their default level is warn; --log-level info (or
// TENANTVAULT_LOG_LEVEL, or the config file) brings them back, drawn above
// the bar. Elsewhere (files, pipes, CI) the default stays info.
var barCommands = map[string]bool{"restore": true, "snapshot": true, "verify": true, "drill": true, "diff": true, "changes": true}

func (a *app) terminalLogLevel(cmd *cobra.Command) {
	if barCommands[cmd.Name()] && cmd.Parent() == a.root && !cmd.Flags().Changed("log-level") && a.showProgress() {
		a.logLevel = "warn"
	}
}

// logSink is where the logger writes: stderr, or the running progress
// display. Writes hold the lock so that a display is never shut down under
// a log line in flight.
type logSink struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// notef prints a line for people on stderr, above the progress bar when
// one is drawn.
func (a *app) notef(format string, args ...any) {
	fmt.Fprintf(a.logs, format+"\n", args...)
}

// meterSpec says what a progress bar counts.
type meterSpec struct {
	// verb and noun make the label: "restored 132/400 tenants".
	verb, noun string
	// items returns the work units done and their total (0: not known yet).
	items func() (done, total int64)
	// failed, when set, counts the units that failed (not in items' done).
	failed func() int64
	// bytes, when set, drives the bar, rate and ETA in bytes; otherwise
	// items do.
	bytes func() (done, total int64)
	// estimate marks a byte total that is an estimate ("~3.4 GiB").
	estimate bool
	// after, when set, is added to the label once every item is done (work
	// that follows the counted part: a drill's database checks).
	after string
	// open marks work without an end (capture): a spinner and a rate, no
	// total and no ETA; detail, when set, is added to the label.
	open   bool
	detail func() string
}

// meter is one running progress bar; a nil meter (quiet) does nothing.
type meter struct {
	a    *app
	spec meterSpec
	p    *mpb.Progress
	bar  *mpb.Bar
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// showProgress reports whether a progress bar is drawn: only for people,
// on a terminal that can move the cursor.
func (a *app) showProgress() bool {
	return !a.jsonOut && terminal(a.stderr) && os.Getenv("TERM") != "dumb"
}

// startMeter draws a progress bar until finish is called; nil when quiet.
func (a *app) startMeter(spec meterSpec) *meter {
	if !a.showProgress() {
		return nil
	}
	m := &meter{a: a, spec: spec, stop: make(chan struct{})}
	m.p = mpb.New(mpb.WithConsoleWriter(consoleWriter(a.stderr)), mpb.WithRefreshRate(150*time.Millisecond))
	start := time.Now()
	// "restored 132/400 tenants, 1.2 GiB/3.4 GiB [===>---] 45.0 MiB/s, ETA 00:41"
	var counts, rate decor.Decorator
	if spec.bytes != nil {
		pair := ", % .1f/% .1f"
		if spec.estimate {
			pair = ", % .1f/~% .1f"
		}
		counts = decor.Counters(decor.SizeB1024(0), pair)
		rate = decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WC{W: 10})
	} else {
		counts = decor.Any(func(decor.Statistics) string { return "" })
		rate = decor.AverageSpeed(0, "%.1f "+spec.noun+"/s")
	}
	// A total of 0 makes the bar's total dynamic: it completes only when
	// finish says so, not when a count first meets an estimate.
	if spec.open {
		m.bar = m.p.New(0, mpb.SpinnerStyle(), mpb.BarWidth(3),
			mpb.PrependDecorators(decor.Any(m.label), counts),
			mpb.AppendDecorators(rate),
		)
	} else {
		m.bar = m.p.New(0, mpb.BarStyle(),
			mpb.PrependDecorators(decor.Any(m.label), counts),
			mpb.AppendDecorators(rate, eta{decor.AverageETA(decor.ET_STYLE_MMSS), start}),
		)
	}
	a.logs.mu.Lock()
	a.logs.w = m.p
	a.logs.mu.Unlock()
	m.update()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.update()
			}
		}
	}()
	return m
}

func (m *meter) label(s decor.Statistics) string {
	done, total := m.spec.items()
	noun := m.spec.noun
	if total == 1 {
		noun = noun[:len(noun)-1]
	}
	if total <= 0 {
		if m.spec.detail != nil {
			return fmt.Sprintf("%s %d %s %s", m.spec.verb, done, noun, m.spec.detail())
		}
		return fmt.Sprintf("%s %d %s", m.spec.verb, done, noun)
	}
	l := fmt.Sprintf("%s %d/%d %s", m.spec.verb, done, total, noun)
	failed := int64(0)
	if m.spec.failed != nil {
		failed = m.spec.failed()
	}
	if failed > 0 {
		l += fmt.Sprintf(" (%d failed)", failed)
	}
	if m.spec.after != "" && done+failed >= total && !s.Completed {
		l += ", " + m.spec.after
	}
	return l
}

// update moves the bar to the counters.
func (m *meter) update() {
	count := m.spec.items
	if m.spec.bytes != nil {
		count = m.spec.bytes
	}
	done, total := count()
	m.bar.SetTotal(max(total, done), false)
	m.bar.SetCurrent(done)
}

// finish stops the bar: completed (left on screen with its final counts)
// when the work ran to its end, aborted where it stopped otherwise. Log
// lines go to stderr again once the bar is drawn for the last time.
func (m *meter) finish(completed bool) {
	if m == nil {
		return
	}
	m.once.Do(func() {
		close(m.stop)
		m.wg.Wait()
		m.update()
		m.a.logs.mu.Lock()
		defer m.a.logs.mu.Unlock()
		if completed {
			m.bar.SetTotal(-1, true)
		} else {
			m.bar.Abort(false)
		}
		m.p.Wait()
		m.a.logs.w = m.a.stderr
	})
}

// eta shows the estimated time left while the bar runs ("ETA 00:41", "-"
// in the first seconds) and the time taken once it completes.
type eta struct {
	decor.Decorator
	start time.Time
}

func (e eta) Decor(s decor.Statistics) (string, int) {
	switch {
	case s.Completed:
		return e.Format(", in " + time.Since(e.start).Round(time.Second).String())
	case s.Aborted:
		return e.Format(", stopped")
	case s.Current == 0 || time.Since(e.start) < 2*time.Second:
		return e.Format(", ETA -") // too early for a rate worth extrapolating
	}
	str, _ := e.Decorator.Decor(s)
	return e.Format(", ETA " + strings.TrimSpace(str))
}

func (e eta) Unwrap() decor.Decorator { return e.Decorator }

// consoleWriter is mpb's own console writer, with two changes to how a
// frame replaces the last one (frameWriter).
func consoleWriter(stderr io.Writer) mpb.ConsoleWriter {
	w := cupwriter.New(frameWriter{stderr}, false)
	if f, ok := stderr.(*os.File); ok {
		w.SetTermFd(int(f.Fd()))
	}
	return w
}

// frameWriter writes cupwriter's frames, each of which starts with the
// move back over the last one: "ESC[nA" (cursor up n rows), then "ESC[J"
// (erase to the end of the screen).
//   - Every frame starts at the first column: the cursor-up keeps the
//     column, and the terminal's echo of a key typed while the bar runs
//     (^C) moves it, which would leave the echo's width of the old line
//     behind.
//   - The old rows are erased without erasing the screen from its top-left
//     corner: tmux (scroll-on-clear, on by default) moves a screen erased
//     from there into its history first, so a bar drawn on the first row
//     left a copy of every frame in the scrollback. The first old row is
//     erased as a line, the rest from the row below it.
type frameWriter struct{ w io.Writer }

const eraseToEnd = "\x1b[J"

func (f frameWriter) Write(p []byte) (int, error) {
	out := make([]byte, 0, len(p)+16)
	out = append(out, '\r')
	rest := p
	if up, ok := cursorUp(p); ok && bytes.HasPrefix(p[len(up):], []byte(eraseToEnd)) {
		out = append(out, up...)
		out = append(out, "\x1b[2K\x1b[1B"+eraseToEnd+"\x1b[1A"...)
		rest = p[len(up)+len(eraseToEnd):]
	}
	if _, err := f.w.Write(append(out, rest...)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// cursorUp returns the "ESC[nA" that p starts with.
func cursorUp(p []byte) ([]byte, bool) {
	if !bytes.HasPrefix(p, []byte("\x1b[")) {
		return nil, false
	}
	i := 2
	for i < len(p) && p[i] >= '0' && p[i] <= '9' {
		i++
	}
	if i == 2 || i >= len(p) || p[i] != 'A' {
		return nil, false
	}
	return p[:i+1], true
}
