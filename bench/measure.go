package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Sample is one measured run of one step.
type Sample struct {
	Wall float64 `json:"wall_s"`
	// User and Sys are the CPU seconds of the client process tree (the
	// command and every descendant it waited for), or of this process for
	// steps that run in-process.
	User float64 `json:"user_s"`
	Sys  float64 `json:"sys_s"`
	// Server is the CPU seconds of the PostgreSQL clusters involved
	// (postmaster, backends, background workers) during the step.
	Server float64 `json:"server_cpu_s"`
	// MaxRSS is the peak resident set (VmHWM) of the largest single client
	// process; TreeRSS the largest sum over the client's process tree. A
	// sampler reads both every 100 ms. Bytes; 0 when not measured.
	MaxRSS  int64 `json:"max_rss_bytes"`
	TreeRSS int64 `json:"tree_rss_bytes"`
	// Bytes is what the step wrote (repository, dump, backup) or moved
	// (rows loaded); its meaning is stated per step.
	Bytes int64 `json:"bytes"`
	// Load is the 1-minute load average when the step ended.
	Load float64 `json:"load1"`
}

// CPU is the client's user+sys CPU seconds.
func (s Sample) CPU() float64 { return s.User + s.Sys }

// clk is the kernel's clock tick, which /proc/*/stat times are counted in.
const clk = 100

// procStat reads utime, stime, cutime, cstime (in seconds), ppid and rss
// (bytes) of a process.
type procStat struct {
	pid, ppid                    int
	utime, stime, cutime, cstime float64
	rss                          int64
}

var pageSize = int64(os.Getpagesize())

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 22 {
		return procStat{}, false
	}
	num := func(k int) float64 { v, _ := strconv.ParseFloat(f[k], 64); return v }
	// f[0] is field 3 (state): field n is f[n-3].
	return procStat{
		pid: pid, ppid: int(num(1)),
		utime: num(11) / clk, stime: num(12) / clk, cutime: num(13) / clk, cstime: num(14) / clk,
		rss: int64(num(21)) * pageSize,
	}, true
}

// allStats reads every process on the machine.
func allStats() []procStat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	out := make([]procStat, 0, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readStat(pid); ok {
			out = append(out, st)
		}
	}
	return out
}

// descendants returns the processes below root (not root itself).
func descendants(all []procStat, root int) []procStat {
	children := map[int][]procStat{}
	for _, s := range all {
		children[s.ppid] = append(children[s.ppid], s)
	}
	var out []procStat
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// serverCPU is the CPU seconds used so far by the clusters whose
// postmasters are given: their own time, the time of children they have
// reaped, and the time of the children still running.
func serverCPU(postmasters []int) float64 {
	if len(postmasters) == 0 {
		return 0
	}
	all := allStats()
	var total float64
	for _, pm := range postmasters {
		if pm <= 0 {
			continue
		}
		st, ok := readStat(pm)
		if !ok {
			continue
		}
		total += st.utime + st.stime + st.cutime + st.cstime
		for _, d := range descendants(all, pm) {
			total += d.utime + d.stime
		}
	}
	return total
}

func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// treeSampler follows a process tree every 100 ms: the largest sum of
// its resident sets, and the largest peak (VmHWM) of any one process.
// (The rusage of a child is no use here: Linux counts in it the resident
// set of the parent that forked it, before the exec.)
type treeSampler struct {
	stop      chan struct{}
	done      chan struct{}
	peak, hwm int64
}

func vmHWM(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

func sampleTree(pid int) *treeSampler {
	s := &treeSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			var sum int64
			if st, ok := readStat(pid); ok {
				tree := append([]procStat{st}, descendants(allStats(), pid)...)
				for _, p := range tree {
					sum += p.rss
					s.hwm = max(s.hwm, vmHWM(p.pid))
				}
			}
			s.peak = max(s.peak, sum)
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *treeSampler) finish() (sum, one int64) {
	close(s.stop)
	<-s.done
	return s.peak, s.hwm
}

// command is an external program to run and measure.
type command struct {
	name string   // for logs and errors
	args []string // args[0] is the program
	env  []string // added to the environment
	dir  string
	// stdout, when set, receives the command's standard output (else it
	// goes to the log file).
	stdout io.Writer
}

// runMeasured runs c, with its output in logDir/<name>.log, and measures
// it. The PostgreSQL clusters' CPU is taken around it.
func (b *bench) runMeasured(ctx context.Context, c command) (Sample, error) {
	logPath := filepath.Join(b.logDir, sanitize(c.name)+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return Sample{}, err
	}
	defer lf.Close()
	fmt.Fprintf(lf, "\n=== %s: %s\n", time.Now().Format(time.RFC3339), strings.Join(c.args, " "))
	cmd := exec.CommandContext(ctx, c.args[0], c.args[1:]...)
	cmd.Env = append(os.Environ(), c.env...)
	cmd.Dir = c.dir
	cmd.Stdout = lf
	if c.stdout != nil {
		cmd.Stdout = c.stdout
	}
	cmd.Stderr = lf
	// Ctrl-C reaches the command through us (context cancel), not twice.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	srv0 := serverCPU(b.postmasters())
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Sample{}, fmt.Errorf("%s: %w", c.name, err)
	}
	sampler := sampleTree(cmd.Process.Pid)
	werr := cmd.Wait()
	wall := time.Since(start).Seconds()
	peak, hwm := sampler.finish()
	s := Sample{Wall: wall, Server: serverCPU(b.postmasters()) - srv0, TreeRSS: peak, MaxRSS: hwm, Load: loadAvg()}
	if ps := cmd.ProcessState; ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			s.User = tv(ru.Utime)
			s.Sys = tv(ru.Stime)
		}
	}
	if werr != nil {
		return s, fmt.Errorf("%s failed (%v); see %s:\n%s", c.name, werr, logPath, tail(logPath, 15))
	}
	return s, nil
}

// measureFunc runs f in this process and measures it with this process's
// resource usage.
func (b *bench) measureFunc(f func() (int64, error)) (Sample, error) {
	var r0, r1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	srv0 := serverCPU(b.postmasters())
	start := time.Now()
	n, err := f()
	wall := time.Since(start).Seconds()
	syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	return Sample{
		Wall: wall, User: tv(r1.Utime) - tv(r0.Utime), Sys: tv(r1.Stime) - tv(r0.Stime),
		Server: serverCPU(b.postmasters()) - srv0, Bytes: n, Load: loadAvg(),
	}, err
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, s)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// dirSize is the number of bytes in regular files below dir.
func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// lockedLog serialises progress lines.
type lockedLog struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedLog) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "%s tvbench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
