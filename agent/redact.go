package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/tenancy"
)

// redactor replaces every secret the agent knows (database passwords, whole
// database URLs, the webhook URL) in text bound for logs, webhooks and
// health pages. Code already avoids printing them; this is the second
// line of defence against an error message that quotes one anyway.
type redactor struct {
	r *strings.Replacer
}

func newRedactor(cfg *Config) *redactor {
	var pairs [][2]string
	add := func(secret, with string) {
		// Very short strings would shred ordinary words.
		if len(secret) >= 3 {
			pairs = append(pairs, [2]string{secret, with})
		}
	}
	for _, s := range cfg.Sources {
		for _, u := range []string{s.url, s.scratch} {
			if u == "" {
				continue
			}
			add(u, tenancy.RedactURL(u))
			if pc, err := pgx.ParseConfig(u); err == nil && pc.Password != "" {
				add(pc.Password, "REDACTED")
				add(url.QueryEscape(pc.Password), "REDACTED")
				add(url.PathEscape(pc.Password), "REDACTED")
			}
		}
	}
	if cfg.WebhookURL != "" {
		add(cfg.WebhookURL, "REDACTED-webhook-url")
		if u, err := url.Parse(cfg.WebhookURL); err == nil {
			add(u.RawQuery, "REDACTED")
			add(u.Path, "/REDACTED")
		}
	}
	// Longer secrets first, so a URL is replaced whole before the
	// password inside it.
	sort.SliceStable(pairs, func(i, j int) bool { return len(pairs[i][0]) > len(pairs[j][0]) })
	var args []string
	for _, p := range pairs {
		args = append(args, p[0], p[1])
	}
	return &redactor{r: strings.NewReplacer(args...)}
}

func (r *redactor) String(s string) string {
	if r == nil {
		return s
	}
	return r.r.Replace(s)
}

// redactHandler is a slog.Handler that passes every message and attribute
// through a redactor.
type redactHandler struct {
	h slog.Handler
	r *redactor
}

func (h *redactHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h *redactHandler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, h.r.String(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.attr(a))
		return true
	})
	return h.h.Handle(ctx, out)
}

func (h *redactHandler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, h.r.String(v.String()))
	case slog.KindGroup:
		attrs := v.Group()
		out := make([]any, len(attrs))
		for i, g := range attrs {
			out[i] = h.attr(g)
		}
		return slog.Group(a.Key, out...)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return slog.String(a.Key, h.r.String(x.Error()))
		case fmt.Stringer:
			return slog.String(a.Key, h.r.String(x.String()))
		case []string:
			out := make([]string, len(x))
			for i, s := range x {
				out[i] = h.r.String(s)
			}
			return slog.Any(a.Key, out)
		default:
			return slog.String(a.Key, h.r.String(fmt.Sprint(x)))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}

func (h *redactHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		out[i] = h.attr(a)
	}
	return &redactHandler{h: h.h.WithAttrs(out), r: h.r}
}

func (h *redactHandler) WithGroup(name string) slog.Handler {
	return &redactHandler{h: h.h.WithGroup(name), r: h.r}
}
