package configs

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Problem is one thing wrong in a TOML file, reported as "file:line: msg".
type Problem struct {
	File string
	Line int // 0 when the line is unknown
	Msg  string
}

// String is the problem as "file:line: msg", or "file: msg" when the line is unknown.
func (p Problem) String() string {
	if p.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
	}
	return fmt.Sprintf("%s: %s", p.File, p.Msg)
}

// Problems is every problem found in a configuration, reported at once, in the order of
// their lines.
type Problems []Problem

// Error is one problem per line.
func (e Problems) Error() string {
	lines := make([]string, len(e))
	for i, p := range e {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// tomlDoc is a TOML file decoded into generic values, with the line of every key, so that
// a schema can be checked against it and every problem reported with its line. Decoding
// into a map (not a struct) is what lets one file report all of its problems at once:
// BurntSushi/toml stops at the first type mismatch.
type tomlDoc struct {
	file  string
	data  map[string]any
	lines map[string]int // "listen", "env.0", "env.0.repo", "env.0.vars.APP_ENV"
	probs []Problem
}

// parseTOML decodes text. A syntax error is returned as the only problem.
func parseTOML(file, text string) (*tomlDoc, error) {
	d := &tomlDoc{file: file, data: map[string]any{}, lines: indexLines(text)}
	if _, err := toml.Decode(text, &d.data); err != nil {
		if pe, ok := err.(toml.ParseError); ok {
			return nil, Problems{{File: file, Line: pe.Position.Line, Msg: pe.Message}}
		}
		return nil, Problems{{File: file, Msg: err.Error()}}
	}
	return d, nil
}

// err returns the problems found, in the order of their lines.
func (d *tomlDoc) err() error {
	sort.SliceStable(d.probs, func(i, j int) bool { return d.probs[i].Line < d.probs[j].Line })
	return Problems(d.probs)
}

func (d *tomlDoc) addf(path, format string, args ...any) {
	d.probs = append(d.probs, Problem{File: d.file, Line: d.line(path), Msg: fmt.Sprintf(format, args...)})
}

// line is the line of path, or of its nearest known parent.
func (d *tomlDoc) line(path string) int {
	for path != "" {
		if l, ok := d.lines[path]; ok {
			return l
		}
		i := strings.LastIndexByte(path, '.')
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// table is a view of one TOML table at path ("" for the root, "env.0" for an array element).
type table struct {
	doc  *tomlDoc
	path string
	m    map[string]any
}

func (t table) key(k string) string {
	if t.path == "" {
		return k
	}
	return t.path + "." + k
}

// name is how the table is shown in messages: env[0] for "env.0".
func (t table) name(k string) string {
	parts := strings.Split(t.key(k), ".")
	var b strings.Builder
	for i, p := range parts {
		if _, err := strconv.Atoi(p); err == nil && i > 0 {
			fmt.Fprintf(&b, "[%s]", p)
			continue
		}
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(p)
	}
	return b.String()
}

// only reports every key of t not in known. A typo must not silently disable a setting.
func (t table) only(known ...string) {
	var keys []string
	for k := range t.m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return t.doc.line(t.key(keys[i])) < t.doc.line(t.key(keys[j])) })
	for _, k := range keys {
		if !slices.Contains(known, k) {
			t.doc.addf(t.key(k), "unknown key %q", t.name(k))
		}
	}
}

func (t table) has(k string) bool { _, ok := t.m[k]; return ok }

func (t table) str(k string) string {
	v, ok := t.m[k]
	if !ok {
		return ""
	}
	s, ok := v.(string)
	if !ok {
		t.doc.addf(t.key(k), "%s must be a string", t.name(k))
	}
	return s
}

func (t table) integer(k string, def int) int {
	v, ok := t.m[k]
	if !ok {
		return def
	}
	n, ok := v.(int64)
	if !ok {
		t.doc.addf(t.key(k), "%s must be an integer", t.name(k))
		return def
	}
	return int(n)
}

// boolean reads a true or false; false when absent.
func (t table) boolean(k string) bool {
	v, ok := t.m[k]
	if !ok {
		return false
	}
	b, ok := v.(bool)
	if !ok {
		t.doc.addf(t.key(k), "%s must be true or false", t.name(k))
	}
	return b
}

// duration reads a Go duration string ("30m"). Integers are refused: in BurntSushi/toml
// they would silently mean nanoseconds.
func (t table) duration(k string, def time.Duration) time.Duration {
	if !t.has(k) {
		return def
	}
	s, ok := t.m[k].(string)
	if !ok {
		t.doc.addf(t.key(k), "%s must be a duration string such as \"30m\"", t.name(k))
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.doc.addf(t.key(k), "%s: %q is not a duration (use Go syntax: \"90s\", \"30m\", \"1h\")", t.name(k), s)
		return def
	}
	if d < 0 {
		t.doc.addf(t.key(k), "%s must not be negative", t.name(k))
		return def
	}
	return d
}

// size reads a byte size: an integer (bytes) or a string with a unit, "500MB", "2GiB",
// "1.5 GB" (B, KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB of 1024).
func (t table) size(k string, def int64) int64 {
	v, ok := t.m[k]
	if !ok {
		return def
	}
	switch v := v.(type) {
	case int64:
		if v < 0 {
			t.doc.addf(t.key(k), "%s must not be negative", t.name(k))
			return def
		}
		return v
	case string:
		n, err := ParseSize(v)
		if err != nil {
			t.doc.addf(t.key(k), "%s: %v", t.name(k), err)
			return def
		}
		return n
	}
	t.doc.addf(t.key(k), "%s must be a size such as \"2GiB\" or a number of bytes", t.name(k))
	return def
}

// sizeUnits are the units ParseSize knows, longest first so that "GiB" is not read as "B".
var sizeUnits = []struct {
	name string
	mult float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
}

// ParseSize reads a byte size with a unit, such as "2GiB", "500 MB" or "1.5GB".
func ParseSize(s string) (int64, error) {
	str := strings.TrimSpace(s)
	for _, u := range sizeUnits {
		num, ok := strings.CutSuffix(str, u.name)
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f*u.mult >= 1<<62 {
			break
		}
		return int64(f * u.mult), nil
	}
	return 0, fmt.Errorf("%q is not a size (use a number and a unit: \"500MB\", \"2GiB\")", s)
}

func (t table) strings(k string) []string {
	v, ok := t.m[k]
	if !ok {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		t.doc.addf(t.key(k), "%s must be a list of strings", t.name(k))
		return nil
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		s, ok := e.(string)
		if !ok {
			t.doc.addf(t.key(k), "%s must be a list of strings", t.name(k))
			return nil
		}
		out = append(out, s)
	}
	return out
}

func (t table) sub(k string) (table, bool) {
	v, ok := t.m[k]
	if !ok {
		return table{}, false
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.doc.addf(t.key(k), "%s must be a table", t.name(k))
		return table{}, false
	}
	return table{doc: t.doc, path: t.key(k), m: m}, true
}

func (t table) list(k string) []table {
	v, ok := t.m[k]
	if !ok {
		return nil
	}
	ms, ok := v.([]map[string]any)
	if !ok {
		t.doc.addf(t.key(k), "%s must be an array of tables ([[%s]])", t.name(k), k)
		return nil
	}
	out := make([]table, len(ms))
	for i, m := range ms {
		out[i] = table{doc: t.doc, path: fmt.Sprintf("%s.%d", t.key(k), i), m: m}
	}
	return out
}
