package configs

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// lineCases are TOML texts and the exact result of indexLines for each. They are also the
// seeds of FuzzIndexLines.
var lineCases = []struct {
	name string
	toml string
	want map[string]int
}{
	{
		name: "keys and comments",
		toml: `# a comment
listen = "x" # trailing comment

data_dir = 'd'
`,
		want: map[string]int{"listen": 2, "data_dir": 4},
	},
	{
		// The reported bug: a ''' string holding """ hid the keys after it, or put
		// them on the wrong line.
		name: "literal multi-line string holding triple double quotes",
		toml: `a = '''he said """hi
and "" bye
'''
b = 1
cmds = ['''echo """
''', '''x"""''']
[t]
c = 2
`,
		want: map[string]int{"a": 1, "b": 4, "cmds": 5, "cmds.0": 5, "cmds.1": 6, "t": 7, "t.c": 8},
	},
	{
		name: "one-line strings holding triple quotes",
		toml: `a = '''say """hi'''
b = "say '''hi"
c = 'say """hi'
d = 1
`,
		want: map[string]int{"a": 1, "b": 2, "c": 3, "d": 4},
	},
	{
		name: "basic multi-line string holding triple single quotes and escaped quotes",
		toml: `s = """one ''' two
\""" still inside
x = 1
[fake]
"""
after = 1
`,
		want: map[string]int{"s": 1, "after": 6},
	},
	{
		name: "multi-line string opened alone on its line",
		toml: `x = """
key = value
[table]
[[array]]
"""
y = '''
z = 1
'''
real = 1
`,
		want: map[string]int{"x": 1, "y": 6, "real": 9},
	},
	{
		name: "extra quotes before the closing delimiter",
		toml: `empty = """"""
a = """"a""""
b = ''''b''''
c = """a""b"""
d = """
""""
e = 1
`,
		want: map[string]int{"empty": 1, "a": 2, "b": 3, "c": 4, "d": 5, "e": 7},
	},
	{
		name: "backslashes in multi-line basic strings",
		toml: `a = """ends with a backslash \\"""
b = """quote \""""
c = """line \
    continued \
"""
d = 1
`,
		want: map[string]int{"a": 1, "b": 2, "c": 3, "d": 6},
	},
	{
		name: "backslash in a literal string is not an escape",
		toml: `path = 'C:\'
x = '''C:\'''
y = 1
`,
		want: map[string]int{"path": 1, "x": 2, "y": 3},
	},
	{
		name: "comment and bracket characters inside strings",
		toml: `a = "x # y [z] = w"
b = 'p = [q' # ] "
c = "esc \" # ["
d = 1
`,
		want: map[string]int{"a": 1, "b": 2, "c": 3, "d": 4},
	},
	{
		name: "comments holding quotes and brackets",
		toml: `# x = """
# [fake]
a = 1 # '''
# [[fake]]
b = 2 # {
`,
		want: map[string]int{"a": 3, "b": 5},
	},
	{
		name: "array spanning lines with comments",
		toml: `list = [ # a comment with " and [
  "a", # ] '
  'b',
  """c
x = 1""",
]
next = 1
`,
		want: map[string]int{"list": 1, "list.0": 2, "list.1": 3, "list.2": 4, "next": 7},
	},
	{
		name: "nested arrays",
		toml: `m = [[1, 2], [
  3]]
n = []
`,
		want: map[string]int{"m": 1, "m.0": 1, "m.0.0": 1, "m.0.1": 1, "m.1": 1, "m.1.0": 2, "n": 3},
	},
	{
		name: "inline tables",
		toml: `point = { x = 1, y.z = "}", 'q' = { r = [1] } }
empty = {}
after = 1
`,
		want: map[string]int{
			"point": 1, "point.x": 1, "point.y": 1, "point.y.z": 1, "point.q": 1, "point.q.r": 1, "point.q.r.0": 1,
			"empty": 2, "after": 3,
		},
	},
	{
		name: "array of inline tables spanning lines",
		toml: `deps = [
  {path = "a"},
  # {path = "commented"},
  { path = "b", opts = { deep = true } },
]
after = 1
`,
		want: map[string]int{
			"deps": 1, "deps.0": 2, "deps.0.path": 2,
			"deps.1": 4, "deps.1.path": 4, "deps.1.opts": 4, "deps.1.opts.deep": 4,
			"after": 6,
		},
	},
	{
		name: "arrays of tables and their subtables",
		toml: `[[env]]
repo = "a"
[env.vars]
APP_ENV = "x"

[[env]]
repo = "b"
[env.vars]
APP_ENV = "y"
`,
		want: map[string]int{
			"env.0": 1, "env.0.repo": 2, "env.0.vars": 3, "env.0.vars.APP_ENV": 4,
			"env.1": 6, "env.1.repo": 7, "env.1.vars": 8, "env.1.vars.APP_ENV": 9,
		},
	},
	{
		name: "nested arrays of tables counted per parent element",
		toml: `[[a]]
[[a.b]]
x = 1
[[a.b]]
[[a]]
[[a.b]]
y = 2
`,
		want: map[string]int{
			"a.0": 1, "a.0.b.0": 2, "a.0.b.0.x": 3, "a.0.b.1": 4,
			"a.1": 5, "a.1.b.0": 6, "a.1.b.0.y": 7,
		},
	},
	{
		name: "headers with whitespace, quoted and dotted parts",
		toml: `[ a . "b.c" . 'd' ]
k = 1
[[ arr ]] # comment
[ "quoted \" header" ]
`,
		want: map[string]int{
			"a": 1, "a.b.c": 1, "a.b.c.d": 1, "a.b.c.d.k": 2,
			"arr.0": 3, `quoted " header`: 4,
		},
	},
	{
		name: "dotted and quoted keys",
		toml: `a . b = 1
"1BAD" = 2
'x.y' = 3
"a\"b" = 4
"\u0041\x42" = 5
site."google.com" = true
`,
		want: map[string]int{
			"a": 1, "a.b": 1, "1BAD": 2, "x.y": 3, `a"b`: 4, "AB": 5,
			"site": 6, "site.google.com": 6,
		},
	},
	{
		name: "first line of a key is kept",
		toml: `[a.b]
x = 1
[a]
y = 2
`,
		want: map[string]int{"a": 1, "a.b": 1, "a.b.x": 2, "a.y": 4},
	},
	{
		name: "dates and numbers",
		toml: `d = 1979-05-27 07:32:00Z # a space inside
f = [1_000, -0.5e3, inf, 0x1F]
t = 07:32:00
`,
		want: map[string]int{"d": 1, "f": 2, "f.0": 2, "f.1": 2, "f.2": 2, "f.3": 2, "t": 3},
	},
	{
		name: "CRLF line ends and a byte order mark",
		toml: "\ufeffa = 1\r\n[t]\r\nb = \"\"\"x\r\ny\"\"\"\r\nc = 2\r\n",
		want: map[string]int{"a": 1, "t": 2, "t.b": 3, "t.c": 5},
	},
}

func TestIndexLines(t *testing.T) {
	for _, tt := range lineCases {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := toml.Decode(tt.toml, new(map[string]any)); err != nil {
				t.Fatalf("the case is not valid TOML: %v", err)
			}
			got := indexLines(tt.toml)
			for _, k := range slices.Sorted(maps.Keys(tt.want)) {
				if l, ok := got[k]; !ok {
					t.Errorf("%q: no line, want %d", k, tt.want[k])
				} else if l != tt.want[k] {
					t.Errorf("%q: line %d, want %d", k, l, tt.want[k])
				}
			}
			for _, k := range slices.Sorted(maps.Keys(got)) {
				if _, ok := tt.want[k]; !ok {
					t.Errorf("%q: unexpected key on line %d", k, got[k])
				}
			}
		})
	}
}

// TestProblemLineAfterStrings is the reported bug as the pusher saw it: a problem after a
// multi-line literal string holding """ was reported on the wrong line, or on none.
func TestProblemLineAfterStrings(t *testing.T) {
	_, err := ParseRecipe(`build = ['''
echo """
''', '''make"""''']
colour = "blue"
`)
	if err == nil || !strings.Contains(err.Error(), `slipway.toml:4: unknown key "colour"`) {
		t.Fatalf("ParseRecipe: %v, want the unknown key on line 4", err)
	}
}

// malformedCases are not TOML: indexLines must survive them. They seed FuzzIndexLines.
var malformedCases = []string{
	"",
	"[",
	"[[",
	"[]",
	"[[a]",
	"a",
	"a =",
	"a = [",
	"a = {",
	"a = [}",
	"a = {]",
	"a = [1,,2]",
	"a = { b }",
	"a = { = 1 }",
	`a = "`,
	`a = "\`,
	`a = "\u12`,
	`"\`,
	`"a\"`,
	`a = """`,
	`a = """\`,
	`a = '''`,
	"a = \"x\ny = 1",
	"a = 1 b = 2",
	"a.",
	"a. = 1",
	"= 1",
	"a = 1\n[b\nc = 2",
	"\ufeff",
	"\r\r\n",
	strings.Repeat("[", 100),
	strings.Repeat("a = {", 100),
}

// FuzzIndexLines checks that indexLines survives any text, and on a valid one misses no key.
func FuzzIndexLines(f *testing.F) {
	for _, tt := range lineCases {
		f.Add(tt.toml)
	}
	for _, s := range malformedCases {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		lines := indexLines(text)
		n := strings.Count(text, "\n") + 1
		for k, l := range lines {
			if l < 1 || l > n {
				t.Errorf("%q: line %d of a text of %d lines", k, l, n)
			}
		}
		// A text that decodes has a line for every path (short enough to be recorded).
		var data map[string]any
		if _, err := toml.Decode(text, &data); err != nil {
			return
		}
		for _, p := range keyPaths("", data) {
			if _, ok := lines[p]; !ok && len(p) <= maxPath {
				t.Errorf("%q has no line", p)
			}
		}
	})
}

// TestIndexLinesCoversDecode checks that every key path of a valid document, as decoded by
// BurntSushi/toml, has a line: every key of every table, and every element of every array.
func TestIndexLinesCoversDecode(t *testing.T) {
	docs := map[string]string{}
	for _, name := range []string{"slipway.example.toml", "slipway.repo.example.toml"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		docs[name] = string(b)
	}
	for _, tt := range lineCases {
		docs[tt.name] = tt.toml
	}
	docs["everything at once"] = `title = "x" # "
[owner]
name = 'Tom'
dob = 1979-05-27T07:32:00-08:00
[database]
ports = [ 8000, 8001, 8002 ]
data = [ ["delta", "phi"], [3.14] ]
temp_targets = { cpu = 79.5, case = 72.0 }
[servers.alpha]
ip = "10.0.0.1"
[[products]]
name = "Hammer"
[[products]]
[[products]]
name = "Nail"
color = { 'name' = "grey", tone.dark = true }
[[products.parts]]
id = 1
[products.meta]
"key with spaces" = """
[not.a.table]
"""
`

	for name, text := range docs {
		t.Run(name, func(t *testing.T) {
			var data map[string]any
			if _, err := toml.Decode(text, &data); err != nil {
				t.Fatal(err)
			}
			lines := indexLines(text)
			for _, p := range keyPaths("", data) {
				if _, ok := lines[p]; !ok {
					t.Errorf("%q has no line", p)
				}
			}
		})
	}
}

// keyPaths lists the paths below v, in indexLines' scheme: an array of tables ([[x]]) is
// only its elements, x.0, x.1...
func keyPaths(path string, v any) []string {
	join := func(k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if _, ok := e.([]map[string]any); !ok {
				out = append(out, join(k))
			}
			out = append(out, keyPaths(join(k), e)...)
		}
	case []map[string]any:
		for i, e := range v {
			out = append(out, join(strconv.Itoa(i)))
			out = append(out, keyPaths(join(strconv.Itoa(i)), e)...)
		}
	case []any:
		for i, e := range v {
			out = append(out, join(strconv.Itoa(i)))
			out = append(out, keyPaths(join(strconv.Itoa(i)), e)...)
		}
	}
	return out
}

// TestIndexLinesLinear feeds texts that would cost quadratic time and space to an indexer
// recording every path in full: deep nesting, and long paths with many keys under them.
func TestIndexLinesLinear(t *testing.T) {
	const n = 1 << 20
	var keys strings.Builder // distinct keys: a repeated one is recorded once
	for i := 0; keys.Len() < n; i++ {
		fmt.Fprintf(&keys, "k%d = 1\n", i)
	}
	for name, text := range map[string]string{
		"deep arrays":        "a = " + strings.Repeat("[", n),
		"deep inline tables": "a = " + strings.Repeat("{b=", n/3),
		"long dotted key":    strings.Repeat("a.", n/2) + "b = 1",
		"long header":        "[" + strings.Repeat("a.", n/4) + "b]\n" + keys.String(),
		"long table name":    "[" + strings.Repeat("t", n/2) + "]\n" + keys.String(),
		"many headers":       strings.Repeat("[[a]]\nk = 1\n", n/12),
	} {
		t.Run(name, func(t *testing.T) {
			size := 0
			for k := range indexLines(text) {
				size += len(k)
			}
			if size > 64*len(text) {
				t.Errorf("%d bytes of paths for %d bytes of text", size, len(text))
			}
		})
	}
}

func BenchmarkIndexLines(b *testing.B) {
	text, err := os.ReadFile("slipway.example.toml")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		indexLines(string(text))
	}
}

// FuzzParseRecipe feeds the parser of the pushed tree's slipway.toml, which anyone who may
// push controls: it never panics, and what it accepts holds only recipe keys and shared
// paths inside the release.
func FuzzParseRecipe(f *testing.F) {
	for _, seed := range []string{
		"build = [\"make\"]\ntest = [\"make test\"]\n",
		"shared_files = [\".env\"]\nshared_dirs = [\"storage\", \"a/b\"]\n",
		"buidl = 1\n",
		"shared_dirs = [\"../x\"]\n",
		"build = '''\n[x]\n'''\n",
		"[table]\nbuild = []\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r, err := ParseRecipe(text)
		if err != nil {
			var pe Problems
			if !errors.As(err, &pe) || len(pe) == 0 {
				t.Fatalf("ParseRecipe error %v is not Problems", err)
			}
			return
		}
		for _, p := range append(append([]string{}, r.SharedFiles...), r.SharedDirs...) {
			if p == "" || filepath.IsAbs(p) || p != filepath.Clean(p) || p == ".." || strings.HasPrefix(p, "../") {
				t.Fatalf("accepted shared path %q outside the release", p)
			}
		}
	})
}
