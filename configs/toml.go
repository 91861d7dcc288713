package main

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// A problem is one thing wrong in a TOML file, reported as "file:line: msg".
type problem struct {
	file string
	line int // 0 when the line is unknown
	msg  string
}

func (p problem) String() string {
	if p.line > 0 {
		return fmt.Sprintf("%s:%d: %s", p.file, p.line, p.msg)
	}
	return fmt.Sprintf("%s: %s", p.file, p.msg)
}

// problemsError is every problem found in a configuration, reported at once.
type problemsError []problem

func (e problemsError) Error() string {
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
	probs []problem
}

// parseTOML decodes text. A syntax error is returned as the only problem.
func parseTOML(file, text string) (*tomlDoc, error) {
	d := &tomlDoc{file: file, data: map[string]any{}, lines: indexLines(text)}
	if _, err := toml.Decode(text, &d.data); err != nil {
		if pe, ok := err.(toml.ParseError); ok {
			return nil, problemsError{{file: file, line: pe.Position.Line, msg: pe.Message}}
		}
		return nil, problemsError{{file: file, msg: err.Error()}}
	}
	return d, nil
}

// err returns the problems found, in the order of their lines.
func (d *tomlDoc) err() error {
	sort.SliceStable(d.probs, func(i, j int) bool { return d.probs[i].line < d.probs[j].line })
	return problemsError(d.probs)
}

func (d *tomlDoc) addf(path, format string, args ...any) {
	d.probs = append(d.probs, problem{file: d.file, line: d.line(path), msg: fmt.Sprintf(format, args...)})
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
		if !contains(known, k) {
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

var (
	headerRe = regexp.MustCompile(`^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$`)
	keyRe    = regexp.MustCompile(`^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=(.*)$`)
)

// indexLines maps each key path of a TOML text to its line. It understands what configs
// use (tables, arrays of tables, dotted keys, values spanning lines); anything it cannot
// place simply has no line and is reported against its table.
func indexLines(text string) map[string]int {
	lines := map[string]int{}
	counts := map[string]int{} // array-of-tables name -> elements seen
	prefix := ""
	depth := 0    // open [ or { of a value spanning lines
	inMulti := "" // `"""` or `'''` while inside a multi-line string
	for i, ln := range strings.Split(text, "\n") {
		n := i + 1
		if inMulti != "" {
			if strings.Count(ln, inMulti)%2 == 1 {
				inMulti = ""
			}
			continue
		}
		if depth > 0 {
			depth += bracketDelta(ln)
			continue
		}
		if m := headerRe.FindStringSubmatch(ln); m != nil && !strings.Contains(ln, "=") {
			name := joinKey(m[2])
			if m[1] == "[[" {
				prefix = fmt.Sprintf("%s.%d", name, counts[name])
				counts[name]++
			} else {
				prefix = resolveTable(name, counts)
			}
			if _, ok := lines[prefix]; !ok {
				lines[prefix] = n
			}
			continue
		}
		m := keyRe.FindStringSubmatch(ln)
		if m == nil {
			continue
		}
		key := joinKey(m[1])
		if prefix != "" {
			key = prefix + "." + key
		}
		if _, ok := lines[key]; !ok {
			lines[key] = n
		}
		val := m[2]
		for _, q := range []string{`"""`, `'''`} {
			if strings.Count(val, q)%2 == 1 {
				inMulti = q
			}
		}
		depth += bracketDelta(val)
	}
	return lines
}

// resolveTable turns "env.vars" inside the n-th [[env]] into "env.<n-1>.vars".
func resolveTable(name string, counts map[string]int) string {
	parts := strings.Split(name, ".")
	var out []string
	for i, p := range parts {
		out = append(out, p)
		head := strings.Join(parts[:i+1], ".")
		if c, ok := counts[head]; ok && i < len(parts)-1 {
			out = append(out, strconv.Itoa(c-1))
		}
	}
	return strings.Join(out, ".")
}

// bracketDelta counts [ and { opened minus closed outside strings and comments.
func bracketDelta(s string) int {
	d := 0
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' && quote == '"' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#':
			return d
		case c == '[' || c == '{':
			d++
		case c == ']' || c == '}':
			d--
		}
	}
	return d
}

func joinKey(k string) string {
	parts := strings.Split(k, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}
