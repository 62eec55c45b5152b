package datagen

import (
	"math/big"
	"net/netip"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgtype"
)

// Column values handed to pgx's CopyFrom. A row source keeps one of each
// per column and passes pointers to them, set once, in its value slice:
// pgx asks them for their value through its "valuer" interfaces and encodes
// it at once. Boxing plain values (int64, []byte, time.Time) in the []any
// instead would allocate several times per row, and pointers to plain
// values make pgx dereference them through reflection, which allocates too;
// at tens of millions of rows both show up next to PostgreSQL's own COPY
// cost, on a machine with two cores shared with the server.

type int8Col struct {
	v    int64
	null bool
}

func (c *int8Col) Int64Value() (pgtype.Int8, error) {
	return pgtype.Int8{Int64: c.v, Valid: !c.null}, nil
}

// textCol holds text in a reused buffer. TextValue hands pgx a string that
// aliases the buffer without copying; that is safe because pgx copies it
// into the COPY buffer before asking for the next row.
type textCol struct {
	b    []byte
	null bool
}

func (c *textCol) TextValue() (pgtype.Text, error) {
	if c.null {
		return pgtype.Text{}, nil
	}
	return pgtype.Text{String: unsafe.String(unsafe.SliceData(c.b), len(c.b)), Valid: true}, nil
}

// strCol is a text column holding a string that lives elsewhere (tenant
// IDs, constants).
type strCol struct {
	s    string
	null bool
}

func (c *strCol) set(s string) { c.s, c.null = s, false }

func (c *strCol) TextValue() (pgtype.Text, error) {
	return pgtype.Text{String: c.s, Valid: !c.null}, nil
}

type byteaCol struct{ b []byte }

func (c *byteaCol) BytesValue() ([]byte, error) { return c.b, nil }

type boolCol struct{ v bool }

func (c *boolCol) BoolValue() (pgtype.Bool, error) { return pgtype.Bool{Bool: c.v, Valid: true}, nil }

// tsCol is a timestamptz in unix microseconds.
type tsCol struct {
	us   int64
	null bool
}

func (c *tsCol) TimestamptzValue() (pgtype.Timestamptz, error) {
	if c.null {
		return pgtype.Timestamptz{}, nil
	}
	return pgtype.Timestamptz{Time: time.UnixMicro(c.us).UTC(), Valid: true}, nil
}

// dateCol is a date in unix microseconds (the time of day is dropped).
type dateCol struct {
	us   int64
	null bool
}

func (c *dateCol) DateValue() (pgtype.Date, error) {
	if c.null {
		return pgtype.Date{}, nil
	}
	t := time.UnixMicro(c.us).UTC()
	return pgtype.Date{Time: time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC), Valid: true}, nil
}

type uuidCol struct{ v [16]byte }

func (c *uuidCol) UUIDValue() (pgtype.UUID, error) { return pgtype.UUID{Bytes: c.v, Valid: true}, nil }

type inetCol struct {
	v    netip.Prefix
	null bool
}

func (c *inetCol) NetipPrefixValue() (netip.Prefix, error) {
	if c.null {
		return netip.Prefix{}, nil
	}
	return c.v, nil
}

// decimalCol is a numeric with one decimal: tenths holds ten times the
// value.
type decimalCol struct {
	tenths int64
	null   bool
	i      big.Int
}

func (c *decimalCol) NumericValue() (pgtype.Numeric, error) {
	if c.null {
		return pgtype.Numeric{}, nil
	}
	c.i.SetInt64(c.tenths)
	return pgtype.Numeric{Int: &c.i, Exp: -1, Valid: true}, nil
}
