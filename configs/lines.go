package configs

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxPath bounds the length of a recorded key path. Every key is recorded under its full
// path, so a long table name followed by many keys would otherwise cost the product of the
// two; no configuration key comes near it, and a key past it is reported against its table.
const maxPath = 256

// indexLines maps each key path of a TOML text to the 1-based line where it is first
// defined, so that problems found in the decoded values can be reported as file:line.
//
// Paths join keys with dots, as the decoded map nests them: "listen"; "a.b" for a dotted
// key or the table [a.b]; "env.0" for the first [[env]] header (the array's own name has
// no line) and "env.0.vars" for [env.vars] after it; "point.x" for point = { x = 1 }; and
// "deps.1" for the second element of deps = [...], "deps.1.path" for a key of it. The
// implicit tables of a dotted key or header are recorded at their first mention.
//
// It is a lexer, not a parser: it walks the text once, knowing strings, comments, headers
// and nested values well enough that nothing inside a value or a comment is taken for a
// key. It never fails: BurntSushi/toml reports syntax errors, and on malformed text the
// result is only a best effort.
func indexLines(text string) map[string]int {
	s := &lineScanner{src: strings.TrimPrefix(text, "\ufeff"), line: 1, lines: map[string]int{}, counts: map[string]int{}, ok: true}
	s.document()
	return s.lines
}

// lineScanner is the state of one indexLines walk.
type lineScanner struct {
	src   string
	pos   int // next byte of src
	line  int // line of src[pos]
	lines map[string]int
	// counts is the number of elements of each array of tables, by resolved path
	// ("env", "a.0.b"), so that nested arrays are counted per parent element.
	counts map[string]int
	// table is the path of the table that key/value lines go into ("" for the root), and
	// ok is false when that path could not be recorded.
	table string
	ok    bool
}

// document reads statements until the end of the text.
func (s *lineScanner) document() {
	for {
		s.skipBlankLines()
		if s.pos >= len(s.src) {
			return
		}
		if s.src[s.pos] == '[' {
			s.header()
		} else {
			s.keyValue()
		}
		// Only a comment may follow a statement on its line. Anything else is a syntax
		// error: skip it. This always consumes something when the statement did not.
		s.skipBlank()
		s.skipComment()
		for s.pos < len(s.src) && s.src[s.pos] != '\n' {
			s.pos++
		}
	}
}

// header reads [a.b] or [[a.b]] and makes it the current table.
func (s *lineScanner) header() {
	line := s.line
	s.pos++
	array := s.pos < len(s.src) && s.src[s.pos] == '['
	if array {
		s.pos++
	}
	parts, ok := s.key()
	if !ok {
		s.table, s.ok = "", false
		return
	}
	s.skipBlank()
	if s.pos < len(s.src) && s.src[s.pos] == ']' {
		s.pos++
		if array && s.pos < len(s.src) && s.src[s.pos] == ']' {
			s.pos++
		}
	}

	// Each part that names an array of tables stands for its last element so far, and
	// the last part of [[...]] for a new element.
	path := ""
	for i, p := range parts {
		path, ok = child(path, true, p)
		if !ok {
			break
		}
		if array && i == len(parts)-1 {
			n := s.counts[path]
			s.counts[path] = n + 1
			path, ok = child(path, true, strconv.Itoa(n))
		} else if n, isArray := s.counts[path]; isArray {
			path, ok = child(path, true, strconv.Itoa(n-1))
		}
		if !ok {
			break
		}
		s.record(path, line)
	}
	s.table, s.ok = path, ok
}

// keyValue reads key = value in the current table.
func (s *lineScanner) keyValue() {
	line := s.line
	parts, ok := s.key()
	if !ok {
		return
	}
	s.skipBlank()
	if s.pos >= len(s.src) || s.src[s.pos] != '=' {
		return
	}
	s.pos++
	path, ok := s.define(s.table, s.ok, parts, line)
	s.skipBlank()
	s.value(path, ok)
}

// define records the dotted key parts under parent, each part at line, and returns the
// key's path.
func (s *lineScanner) define(parent string, ok bool, parts []string, line int) (string, bool) {
	path := parent
	for _, p := range parts {
		path, ok = child(path, ok, p)
		if !ok {
			break
		}
		s.record(path, line)
	}
	return path, ok
}

// frame is an array or inline table being read by value.
type frame struct {
	path  string
	ok    bool // path could be recorded
	array bool
	n     int // elements before the current one (arrays)
}

// The states of value: where the next byte is.
const (
	atValue = iota // at a value (string, number, array, inline table...)
	atItem         // after [, { or a comma: at an element or key, or the closing bracket
	atSep          // after a value inside brackets: at a comma or the closing bracket
)

// value reads the value of path, however deeply nested and over however many lines,
// recording the elements of arrays and the keys of inline tables. It keeps its own stack
// so that no input can exhaust the goroutine's.
func (s *lineScanner) value(path string, ok bool) {
	var stack []frame
	state := atValue
	for {
		if state == atValue {
			if s.pos >= len(s.src) {
				return
			}
			switch c := s.src[s.pos]; c {
			case '[', '{':
				s.pos++
				stack = append(stack, frame{path: path, ok: ok, array: c == '['})
				state = atItem
			case '"', '\'':
				if !s.str(c) {
					return
				}
				state = atSep
			default:
				if !s.scalar() {
					return
				}
				state = atSep
			}
			continue
		}
		if len(stack) == 0 {
			return
		}
		f := &stack[len(stack)-1]
		s.skipBlankLines()
		if s.pos >= len(s.src) {
			return
		}
		c := s.src[s.pos]
		if f.array && c == ']' || !f.array && c == '}' {
			s.pos++
			stack = stack[:len(stack)-1]
			state = atSep
			continue
		}
		if state == atSep {
			if c != ',' {
				return
			}
			s.pos++
			if f.array {
				f.n++
			}
			state = atItem
			continue
		}
		line := s.line
		if f.array {
			path, ok = child(f.path, f.ok, strconv.Itoa(f.n))
			if ok {
				s.record(path, line)
			}
		} else {
			parts, good := s.key()
			if !good {
				return
			}
			s.skipBlank()
			if s.pos >= len(s.src) || s.src[s.pos] != '=' {
				return
			}
			s.pos++
			path, ok = s.define(f.path, f.ok, parts, line)
			s.skipBlank()
		}
		state = atValue
	}
}

// key reads a key, bare, quoted or dotted, and returns its parts, unquoted.
func (s *lineScanner) key() ([]string, bool) {
	var parts []string
	for {
		s.skipBlank()
		if s.pos >= len(s.src) {
			return nil, false
		}
		var part string
		if c := s.src[s.pos]; c == '"' || c == '\'' {
			var ok bool
			if part, ok = s.quoted(c); !ok {
				return nil, false
			}
		} else {
			start := s.pos
			for s.pos < len(s.src) && isBare(s.src[s.pos]) {
				s.pos++
			}
			if s.pos == start {
				return nil, false
			}
			part = s.src[start:s.pos]
		}
		parts = append(parts, part)
		s.skipBlank()
		if s.pos >= len(s.src) || s.src[s.pos] != '.' {
			return parts, true
		}
		s.pos++
	}
}

// isBare reports whether c may be in a bare key. Bytes of non-ASCII characters are let
// in: they are a syntax error BurntSushi reports, not a reason to lose the line.
func isBare(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c >= utf8.RuneSelf
}

// str skips the string value whose first quote q is at s.pos, of any of the four kinds
// ("...", '...' and their multi-line forms), and reports whether it ends.
func (s *lineScanner) str(q byte) bool {
	if !strings.HasPrefix(s.src[s.pos:], string([]byte{q, q, q})) {
		_, ok := s.quoted(q)
		return ok
	}
	s.pos += 3
	for s.pos < len(s.src) {
		switch c := s.src[s.pos]; {
		case c == q:
			// Up to two quotes may come just before the closing three: a run of three to
			// five ends the string.
			n := 0
			for s.pos < len(s.src) && s.src[s.pos] == q {
				s.pos++
				n++
			}
			if n >= 3 {
				return true
			}
		case c == '\\' && q == '"':
			// An escaped character, the newline of a line-ending backslash included.
			s.pos++
			if s.pos < len(s.src) {
				s.next()
			}
		default:
			s.next()
		}
	}
	return false
}

// quoted reads the one-line string whose quote q is at s.pos and returns its value, with
// the escapes of a basic string decoded. It stops before a newline: strings of one line
// cannot hold one.
func (s *lineScanner) quoted(q byte) (string, bool) {
	s.pos++
	start := s.pos
	var buf []byte // the value so far, once an escape has made it differ from the text
	escaped := false
	for s.pos < len(s.src) {
		switch c := s.src[s.pos]; {
		case c == q:
			s.pos++
			if escaped {
				return string(buf), true
			}
			return s.src[start : s.pos-1], true
		case c == '\n':
			return "", false
		case c == '\\' && q == '"':
			if !escaped {
				buf = append(buf, s.src[start:s.pos]...)
				escaped = true
			}
			buf = s.escape(buf)
		default:
			if escaped {
				buf = append(buf, c)
			}
			s.pos++
		}
	}
	return "", false
}

// The one-letter escapes of a basic string, and the characters they stand for.
const (
	escapeLetters = "btnfre\"\\"
	escapeChars   = "\b\t\n\f\r\x1b\"\\"
)

// escape appends the character of the escape sequence whose backslash is at s.pos to buf.
// An invalid sequence is kept as written.
func (s *lineScanner) escape(buf []byte) []byte {
	s.pos++
	if s.pos >= len(s.src) {
		return append(buf, '\\')
	}
	c := s.src[s.pos]
	if i := strings.IndexByte(escapeLetters, c); i >= 0 {
		s.pos++
		return append(buf, escapeChars[i])
	}
	n := 0
	switch c {
	case 'x':
		n = 2
	case 'u':
		n = 4
	case 'U':
		n = 8
	}
	if n > 0 && s.pos+n < len(s.src) {
		if r, err := strconv.ParseUint(s.src[s.pos+1:s.pos+1+n], 16, 32); err == nil {
			s.pos += 1 + n
			return utf8.AppendRune(buf, rune(r))
		}
	}
	if c == '\n' {
		return append(buf, '\\')
	}
	s.pos++
	return append(buf, '\\', c)
}

// scalar skips a number, boolean or date (which may hold a space), and reports whether
// there was one.
func (s *lineScanner) scalar() bool {
	start := s.pos
	for s.pos < len(s.src) && !strings.ContainsRune(",]}#\n", rune(s.src[s.pos])) {
		s.pos++
	}
	return s.pos > start
}

// next moves past one byte, counting lines.
func (s *lineScanner) next() {
	if s.src[s.pos] == '\n' {
		s.line++
	}
	s.pos++
}

// skipBlank moves past spaces and tabs (and the \r of a \r\n).
func (s *lineScanner) skipBlank() {
	for s.pos < len(s.src) && (s.src[s.pos] == ' ' || s.src[s.pos] == '\t' || s.src[s.pos] == '\r') {
		s.pos++
	}
}

// skipComment moves to the end of the line if a comment starts at s.pos.
func (s *lineScanner) skipComment() {
	if s.pos < len(s.src) && s.src[s.pos] == '#' {
		for s.pos < len(s.src) && s.src[s.pos] != '\n' {
			s.pos++
		}
	}
}

// skipBlankLines moves past blanks, newlines and comments.
func (s *lineScanner) skipBlankLines() {
	for {
		s.skipBlank()
		s.skipComment()
		if s.pos >= len(s.src) || s.src[s.pos] != '\n' {
			return
		}
		s.next()
	}
}

// record sets the line of path unless it already has one: a key's line is where it is
// first defined.
func (s *lineScanner) record(path string, line int) {
	if _, ok := s.lines[path]; !ok {
		s.lines[path] = line
	}
}

// child is the path of key k in the table at parent, joined as table.key joins it (""
// is the root), or false when parent was not recorded or the path would be too long.
func child(parent string, ok bool, k string) (string, bool) {
	switch {
	case !ok || len(parent)+1+len(k) > maxPath:
		return "", false
	case parent == "":
		return k, true
	}
	return parent + "." + k, true
}
