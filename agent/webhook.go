package agent

import (
	"github.com/tenantvault/tenantvault/restore"

	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// webhookEvent is the JSON body POSTed to webhook_url on a failure.
type webhookEvent struct {
	Event    string    `json:"event"` // snapshot_failed, purge_failed, capture_failed, replay_divergence, replay_proof_failed
	Source   string    `json:"source,omitempty"`
	Error    string    `json:"error"`
	Attempts int       `json:"attempts,omitempty"`
	Host     string    `json:"host"`
	Time     time.Time `json:"time"`
	// For replay_divergence: the interval proven, as sets and LSNs, and
	// what did not replay to the newer set.
	FromSet     string               `json:"from_set,omitempty"`
	ToSet       string               `json:"to_set,omitempty"`
	LSNRange    string               `json:"lsn_range,omitempty"`
	Divergences []restore.Divergence `json:"divergences,omitempty"`
}

// webhookTimeout bounds one delivery.
const webhookTimeout = 10 * time.Second

// webhookSender delivers events in the background: at most cap(sem) at
// once, dropping (and counting) what does not fit, so a slow receiver never
// holds up a schedule.
type webhookSender struct {
	url  string
	log  *slog.Logger
	red  *redactor
	fail prometheus.Counter
	sem  chan struct{}
	wg   sync.WaitGroup
	// client is nil in production (http.DefaultClient's transport with a
	// timeout per request).
	client *http.Client
}

func (w *webhookSender) send(ev webhookEvent) {
	if w.url == "" {
		return
	}
	ev.Error = w.red.String(ev.Error)
	select {
	case w.sem <- struct{}{}:
	default:
		w.fail.Inc()
		w.log.Warn("webhook busy: dropping failure notification", "event", ev.Event, "source", ev.Source)
		return
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() { <-w.sem }()
		if err := w.post(ev); err != nil {
			w.fail.Inc()
			// The error may quote the URL, which may hold a token.
			w.log.Warn("webhook delivery failed", "event", ev.Event, "err", w.red.String(err.Error()))
		}
	}()
}

func (w *webhookSender) post(ev webhookEvent) error {
	body, _ := json.Marshal(ev)
	ctx, cancel := context.WithTimeout(context.Background(), webhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tenantvault-agent")
	c := w.client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}

func (w *webhookSender) wait() { w.wg.Wait() }
