package tenancy

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantvault/tenantvault"
)

// ParseURL parses a database URL or keyword/value connection string. A
// malformed one is an *InputError that never repeats a password.
func ParseURL(dbURL string) (*pgx.ConnConfig, error) {
	if strings.TrimSpace(dbURL) == "" {
		return nil, tenantvault.Inputf("database URL is empty")
	}
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		var pe *pgconn.ParseConfigError
		reason := err.Error()
		if errors.As(err, &pe) && pe.Unwrap() != nil {
			reason = pe.Unwrap().Error()
		}
		return nil, tenantvault.Inputf("bad database URL %s: %s", RedactURL(dbURL), reason)
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "tenantvault"
	}
	return cfg, nil
}

// RedactURL removes a password from a database URL or connection string.
func RedactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" && u.Host != "" {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "REDACTED")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	if strings.Contains(s, "://") {
		// Unparsable URL: cut any password out of the user info by hand.
		return urlPassword.ReplaceAllString(s, "${1}:REDACTED@")
	}
	fields := strings.Fields(s)
	for i, f := range fields {
		if strings.HasPrefix(f, "password=") {
			fields[i] = "password=REDACTED"
		}
	}
	return strings.Join(fields, " ")
}

var urlPassword = regexp.MustCompile(`^([a-z]+://[^:/@]*):[^@]*@`)

// Describe names a database for people: host:port/database, no credentials.
func Describe(cfg *pgx.ConnConfig) string {
	return fmt.Sprintf("%s:%d/%s", cfg.Host, cfg.Port, cfg.Database)
}

// Connect opens a connection with the session settings of SessionSQL. Wrong
// credentials or a missing database are *InputError; an unreachable server
// is a plain error.
func Connect(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, connectError(cfg, err)
	}
	if _, err := conn.Exec(ctx, SessionSQL); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("prepare session on %s: %w", Describe(cfg), err)
	}
	return conn, nil
}

func connectError(cfg *pgx.ConnConfig, err error) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch pg.Code {
		case "28P01", "28000":
			return &tenantvault.InputError{Msg: fmt.Sprintf("cannot connect to %s as %q: %s", Describe(cfg), cfg.User, pg.Message),
				Hint: "check the user and password (PGPASSWORD or ~/.pgpass)"}
		case "3D000":
			return tenantvault.Inputf("cannot connect to %s: %s", Describe(cfg), pg.Message)
		}
		return fmt.Errorf("cannot connect to %s: %s", Describe(cfg), pg.Message)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("cannot connect to %s: %w", Describe(cfg), err)
	}
	// Keep the innermost cause: pgconn's outer text repeats the settings.
	cause := err
	for {
		u := errors.Unwrap(cause)
		if u == nil {
			break
		}
		cause = u
	}
	return fmt.Errorf("cannot connect to %s: %v", Describe(cfg), cause)
}

// WithDatabase returns a copy of cfg connected to another database on the
// same server.
func WithDatabase(cfg *pgx.ConnConfig, name string) *pgx.ConnConfig {
	c := cfg.Copy()
	c.Database = name
	return c
}

// URLWithDatabase returns dbURL naming another database on the same server.
func URLWithDatabase(dbURL, name string) (string, error) {
	if strings.HasPrefix(dbURL, "postgres://") || strings.HasPrefix(dbURL, "postgresql://") {
		u, err := url.Parse(dbURL)
		if err != nil {
			return "", tenantvault.Inputf("bad database URL %s: %v", RedactURL(dbURL), err)
		}
		u.Path, u.RawPath = "/"+name, ""
		q := u.Query()
		q.Del("dbname")
		q.Del("database")
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// In a keyword/value string the last setting of a keyword wins.
	return dbURL + " dbname=" + Literal(name), nil
}
