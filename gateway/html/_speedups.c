/*
 * gateway.html._speedups: the rewriter's scanner, compiled.
 *
 * The same state machine as gateway/html/_scan.py, with the same interface
 * (Scanner(encoding, inject, links), .scan(buf, pos, final) -> (events, stop),
 * .gave_up) and the same events for the same input. Read _scan.py first: it
 * says what each state stands for, and gateway/html/_tokens.py's patterns say
 * exactly which bytes each token takes, citing the WHATWG tokenizer states.
 * Here those patterns are hand-compiled into loops over the bytes; each
 * function names the pattern it implements. The patterns never backtrack
 * (possessive quantifiers, atomic groups), so each one is a single forward
 * pass here.
 *
 * Why it exists: the pure-Python scanner runs one regex call, and a few
 * Python calls, per tag it must look at (links, script and style elements,
 * every tag inside <svg> and <math>), and the regex engine skips the rest at
 * about 140 MB/s. This file does the whole scan in one C call per chunk and
 * returns to Python only with the events (bench/README.md has the figures).
 *
 * Keep the two in step: tests/test_speedups.py runs both over generated
 * documents and the corpus at every chunk split, and tests/test_rewriter*.py
 * run against each.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

/* Event kinds, quote codes and give-up reasons: as in _scan.py. */
enum { HREF = 0, INJECT = 1, FORM = 2, BASE = 3 };
enum { QUOTE_PLAIN = 0, QUOTE_DOUBLE = 1, QUOTE_SINGLE = 2, QUOTE_UNQUOTED = 3, QUOTE_NONE = 4 };
enum { GAVE_UP_AMBIGUITY = 1, GAVE_UP_PLAINTEXT = 2 };

/* Tokenizer states kept between calls (_scan._DATA ...). */
enum {
    M_DATA, M_COMMENT, M_BOGUS, M_CDATA, M_RAW, M_SCRIPT, M_SCRIPT_ESCAPED,
    M_SCRIPT_DOUBLE, M_PASSTHROUGH
};

/* Returned by the steps below instead of a position. */
#define NEED_MORE (-1)
#define FAILED (-2) /* a Python exception is set */

/* TEXT_STATE_HOLDBACK, _HOLD_COMMENT, _HOLD_CDATA. */
#define HOLD_TEXT 16
#define HOLD_COMMENT 3
#define HOLD_CDATA 2

/* -- Byte classes --------------------------------------------------------- */

#define C_WS 0x01        /* WS: [\t\n\f\r ] */
#define C_GAP 0x02       /* _ATTR_GAP: WS or "/" */
#define C_NAME_END 0x04  /* _TAG_NAME_END: WS, "/" or ">" */
#define C_ATTR_STOP 0x08 /* what ends ATTR_NAME: WS, "/", ">" or "=" */
#define C_UQ_STOP 0x10   /* what ends an unquoted value: WS or ">" */
#define C_NOT_PLAIN 0x20 /* not in PLAIN_ASCII: "&", CR, NUL, 0x80-0xFF */
#define C_ALPHA 0x40     /* ASCII letter */

static unsigned char CLASS[256];

static void
init_classes(void)
{
    const char *ws = "\t\n\f\r ";
    for (const char *c = ws; *c; c++) {
        CLASS[(unsigned char)*c] |= C_WS | C_GAP | C_NAME_END | C_ATTR_STOP | C_UQ_STOP;
    }
    CLASS['/'] |= C_GAP | C_NAME_END | C_ATTR_STOP;
    CLASS['>'] |= C_NAME_END | C_ATTR_STOP | C_UQ_STOP;
    CLASS['='] |= C_ATTR_STOP;
    CLASS['&'] |= C_NOT_PLAIN;
    CLASS['\r'] |= C_NOT_PLAIN;
    CLASS[0] |= C_NOT_PLAIN;
    for (int c = 0x80; c < 0x100; c++) {
        CLASS[c] |= C_NOT_PLAIN;
    }
    for (int c = 'A'; c <= 'Z'; c++) {
        CLASS[c] |= C_ALPHA;
        CLASS[c + 32] |= C_ALPHA;
    }
}

#define IS(c, cls) (CLASS[(unsigned char)(c)] & (cls))

static inline unsigned char
lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* -- Tag names ------------------------------------------------------------ */

/* The tag names the tokenizer or the rewriter treats specially, after ASCII
 * lower-casing. T_BREAKOUT stands for the rest of _tokens.BREAKOUT_TAGS. */
enum {
    T_OTHER,
    /* _tokens.INTERESTING_TAGS (T_A ... T_NOFRAMES) */
    T_A, T_AREA, T_FORM, T_BASE, T_HEAD, T_SCRIPT, T_PLAINTEXT, T_SVG, T_MATH,
    T_TITLE, T_TEXTAREA, T_STYLE, T_XMP, T_IFRAME, T_NOEMBED, T_NOFRAMES,
    /* the rest */
    T_HTML, T_FONT, T_BR, T_P, T_BREAKOUT, T_FOREIGNOBJECT, T_DESC,
    T_MI, T_MO, T_MN, T_MS, T_MTEXT, T_ANNOTATION_XML
};

#define INTERESTING(id) ((id) >= T_A && (id) <= T_NOFRAMES)
#define LINK(id) ((id) == T_A || (id) == T_AREA)
#define ROOT(id) ((id) == T_SVG || (id) == T_MATH)
/* _tokens.RCDATA_ELEMENTS | RAWTEXT_ELEMENTS */
#define TEXT_ELEMENT(id) ((id) >= T_TITLE && (id) <= T_NOFRAMES)
/* _tokens.BREAKOUT_TAGS (head, br and p have ids of their own) */
#define BREAKOUT(id) ((id) == T_BREAKOUT || (id) == T_HEAD || (id) == T_BR || (id) == T_P)

static const char *const RAW_END_NAMES[] = {
    [T_TITLE] = "title", [T_TEXTAREA] = "textarea", [T_STYLE] = "style", [T_XMP] = "xmp",
    [T_IFRAME] = "iframe", [T_NOEMBED] = "noembed", [T_NOFRAMES] = "noframes",
};

#define EQ(s) (memcmp(l, (s), n) == 0)

/* The id of the tag name s[0:n] (any ASCII case). */
static int
tag_id(const unsigned char *s, Py_ssize_t n)
{
    char l[16];
    if (n > 14) {
        return T_OTHER;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        l[i] = (char)lower(s[i]);
    }
    switch (n) {
    case 1:
        switch (l[0]) {
        case 'a': return T_A;
        case 'p': return T_P;
        case 'b': case 'i': case 's': case 'u': return T_BREAKOUT;
        }
        return T_OTHER;
    case 2:
        if (EQ("br")) return T_BR;
        if (l[0] == 'm') {
            switch (l[1]) {
            case 'i': return T_MI;
            case 'o': return T_MO;
            case 'n': return T_MN;
            case 's': return T_MS;
            }
            return T_OTHER;
        }
        if (l[0] == 'h' && l[1] >= '1' && l[1] <= '6') return T_BREAKOUT;
        if (EQ("dd") || EQ("dl") || EQ("dt") || EQ("em") || EQ("hr") || EQ("li") ||
            EQ("ol") || EQ("tt") || EQ("ul"))
            return T_BREAKOUT;
        return T_OTHER;
    case 3:
        if (EQ("svg")) return T_SVG;
        if (EQ("xmp")) return T_XMP;
        if (EQ("big") || EQ("div") || EQ("img") || EQ("pre") || EQ("sub") || EQ("sup") ||
            EQ("var"))
            return T_BREAKOUT;
        return T_OTHER;
    case 4:
        if (EQ("area")) return T_AREA;
        if (EQ("form")) return T_FORM;
        if (EQ("base")) return T_BASE;
        if (EQ("head")) return T_HEAD;
        if (EQ("math")) return T_MATH;
        if (EQ("html")) return T_HTML;
        if (EQ("font")) return T_FONT;
        if (EQ("desc")) return T_DESC;
        if (EQ("body") || EQ("code") || EQ("menu") || EQ("meta") || EQ("nobr") ||
            EQ("ruby") || EQ("span"))
            return T_BREAKOUT;
        return T_OTHER;
    case 5:
        if (EQ("title")) return T_TITLE;
        if (EQ("style")) return T_STYLE;
        if (EQ("mtext")) return T_MTEXT;
        if (EQ("embed") || EQ("small") || EQ("table")) return T_BREAKOUT;
        return T_OTHER;
    case 6:
        if (EQ("script")) return T_SCRIPT;
        if (EQ("iframe")) return T_IFRAME;
        if (EQ("center") || EQ("strike") || EQ("strong")) return T_BREAKOUT;
        return T_OTHER;
    case 7:
        if (EQ("noembed")) return T_NOEMBED;
        if (EQ("listing")) return T_BREAKOUT;
        return T_OTHER;
    case 8:
        if (EQ("textarea")) return T_TEXTAREA;
        if (EQ("noframes")) return T_NOFRAMES;
        return T_OTHER;
    case 9:
        return EQ("plaintext") ? T_PLAINTEXT : T_OTHER;
    case 10:
        return EQ("blockquote") ? T_BREAKOUT : T_OTHER;
    case 13:
        return EQ("foreignobject") ? T_FOREIGNOBJECT : T_OTHER;
    case 14:
        return EQ("annotation-xml") ? T_ANNOTATION_XML : T_OTHER;
    }
    return T_OTHER;
}

#undef EQ

/* TAG_NAME after its first letter: where the name that goes on at p ends. */
static inline Py_ssize_t
name_end(const unsigned char *b, Py_ssize_t p, Py_ssize_t size)
{
    while (p < size && !IS(b[p], C_NAME_END)) {
        p++;
    }
    return p;
}

/* -- Attributes ----------------------------------------------------------- */

/* An attribute to look for while reading a tag: its lower-case name, and where
 * the value of the first attribute with that name is (start < 0: absent). */
typedef struct {
    const char *name;
    Py_ssize_t len;
    Py_ssize_t start, end;
    int quote;
} query;

static inline int
plain(const unsigned char *b, Py_ssize_t start, Py_ssize_t end)
{
    for (Py_ssize_t i = start; i < end; i++) {
        if (IS(b[i], C_NOT_PLAIN)) {
            return 0;
        }
    }
    return 1;
}

/*
 * _ATTRIBUTES_LAST_GAP ">" (and ATTRIBUTES ">", the same bytes): the attributes
 * from p, just after a tag name, through the ">" that ends the tag. Returns the
 * position after the ">", or NEED_MORE if the tag does not end within b[0:size].
 * *last_gap (if given) gets where the gap before ">" starts. Each of the nq
 * queries gets the value of the first attribute with its name (ATTRIBUTE_PARTS,
 * FIRST_HREF: PLAIN for a double-quoted PLAIN_ASCII value).
 *
 * Each round is "_ATTR_GAP ATTR_NAME _ATTR_VALUE_PART". A value part that cannot
 * complete (an unquoted value or a quote not closed within the buffer, "=" at
 * the end) makes the whole tag incomplete, as it makes the pattern fail: with
 * "=" present, its other branch "(?!WS*+=)" fails too.
 */
static Py_ssize_t
tag_end(const unsigned char *b, Py_ssize_t p, Py_ssize_t size, Py_ssize_t *last_gap,
        query *queries, int nq)
{
    for (;;) {
        Py_ssize_t gap = p;
        while (p < size && IS(b[p], C_GAP)) {
            p++;
        }
        if (p >= size) {
            return NEED_MORE;
        }
        if (b[p] == '>') {
            if (last_gap != NULL) {
                *last_gap = gap;
            }
            return p + 1;
        }
        /* ATTR_NAME: its first byte may be "=". */
        Py_ssize_t name = p++;
        while (p < size && !IS(b[p], C_ATTR_STOP)) {
            p++;
        }
        Py_ssize_t name_stop = p;
        Py_ssize_t start, end;
        int quote;
        Py_ssize_t q = p;
        while (q < size && IS(b[q], C_WS)) {
            q++;
        }
        if (q < size && b[q] == '=') {
            q++;
            while (q < size && IS(b[q], C_WS)) {
                q++;
            }
            if (q >= size) {
                return NEED_MORE;
            }
            unsigned char c = b[q];
            if (c == '"' || c == '\'') {
                const unsigned char *close = memchr(b + q + 1, c, (size_t)(size - q - 1));
                if (close == NULL) {
                    return NEED_MORE;
                }
                start = q + 1;
                end = close - b;
                quote = c == '"' ? QUOTE_DOUBLE : QUOTE_SINGLE;
                p = end + 1;
            }
            else if (c == '>') {
                /* "=" then ">": an empty value. */
                start = end = p = q;
                quote = QUOTE_UNQUOTED;
            }
            else {
                start = q;
                while (q < size && !IS(b[q], C_UQ_STOP)) {
                    q++;
                }
                end = p = q;
                quote = QUOTE_UNQUOTED;
            }
        }
        else {
            /* No "=": the value part is empty and the whitespace is the next gap. */
            start = end = name_stop;
            quote = QUOTE_NONE;
        }
        for (int i = 0; i < nq; i++) {
            query *wanted = &queries[i];
            if (wanted->start < 0 && name_stop - name == wanted->len) {
                Py_ssize_t k = 0;
                while (k < wanted->len && lower(b[name + k]) == (unsigned char)wanted->name[k]) {
                    k++;
                }
                if (k == wanted->len) {
                    wanted->start = start;
                    wanted->end = end;
                    wanted->quote =
                        quote == QUOTE_DOUBLE && plain(b, start, end) ? QUOTE_PLAIN : quote;
                }
            }
        }
    }
}

/* -- Comments and bogus comments ------------------------------------------ */

/* _COMMENT after its "!--" (p is just after it): the end of the comment, or NEED_MORE. */
static Py_ssize_t
comment_end(const unsigned char *b, Py_ssize_t p, Py_ssize_t size)
{
    /* "<!-->" and "<!--->" (abrupt-closing-of-empty-comment). */
    if (p < size && b[p] == '>') {
        return p + 1;
    }
    if (p + 1 < size && b[p] == '-' && b[p + 1] == '>') {
        return p + 2;
    }
    /* Otherwise the first "-->" or "--!>". */
    while (p < size) {
        const unsigned char *dash = memchr(b + p, '-', (size_t)(size - p));
        if (dash == NULL) {
            return NEED_MORE;
        }
        Py_ssize_t i = dash - b;
        if (i + 2 < size && b[i + 1] == '-') {
            if (b[i + 2] == '>') {
                return i + 3;
            }
            if (b[i + 2] == '!' && i + 3 < size && b[i + 3] == '>') {
                return i + 4;
            }
        }
        p = i + 1;
    }
    return NEED_MORE;
}

/* "[^>]*+>" from p: the position after the ">", or NEED_MORE. */
static inline Py_ssize_t
after_gt(const unsigned char *b, Py_ssize_t p, Py_ssize_t size)
{
    if (p >= size) {
        return NEED_MORE;
    }
    const unsigned char *gt = memchr(b + p, '>', (size_t)(size - p));
    return gt == NULL ? NEED_MORE : gt - b + 1;
}

/* The tokens after "<" that all three patterns skip, q being the "<": end tags and
 * "</" bogus comments ("</" then not alpha, "</>"), with skip_end_tags (SKIP_HTML,
 * SKIP_BEFORE_HEAD; SKIP_FOREIGN stops at end tags), comments, "<!" and "<?" bogus
 * comments (in foreign content, not "<![CDATA["). Returns the position after the
 * token, or NEED_MORE when the pattern stops at q (incomplete, or not one of these).
 */
static Py_ssize_t
skip_markup(const unsigned char *b, Py_ssize_t q, Py_ssize_t size, int skip_end_tags,
            int foreign)
{
    if (q + 1 >= size) {
        return NEED_MORE;
    }
    unsigned char c = b[q + 1];
    if (c == '/') {
        if (q + 2 >= size) {
            return NEED_MORE;
        }
        unsigned char c2 = b[q + 2];
        if (IS(c2, C_ALPHA)) {
            /* _END_TAG: "/" TAG_NAME ATTRIBUTES ">". */
            if (!skip_end_tags) {
                return NEED_MORE;
            }
            return tag_end(b, name_end(b, q + 3, size), size, NULL, NULL, 0);
        }
        if (c2 == '>') {
            return q + 3; /* "</>" */
        }
        return after_gt(b, q + 3, size); /* "/[^A-Za-z>][^>]*+>" */
    }
    if (c == '!') {
        if (q + 3 < size && b[q + 2] == '-' && b[q + 3] == '-') {
            return comment_end(b, q + 4, size);
        }
        if (foreign && q + 9 <= size && memcmp(b + q + 2, "[CDATA[", 7) == 0) {
            return NEED_MORE;
        }
        return after_gt(b, q + 2, size); /* "!(?!--)[^>]*+>" */
    }
    if (c == '?') {
        return after_gt(b, q + 2, size);
    }
    return NEED_MORE;
}

/* -- The scanner ---------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *encoding; /* str */
    int awaiting_injection;
    int links;
    int mode;
    int end_tag; /* the element whose end tag ends RCDATA / RAWTEXT */
    int gave_up;
    int integration_point_fresh;
    /* svg/math roots and the integration points opened inside them, by id */
    int *foreign;
    Py_ssize_t depth, capacity;
} Scanner;

/* A start tag: "<" at start, its attributes from attrs, ">" just before end. */
typedef struct {
    int id;
    Py_ssize_t start, attrs, end, last_gap;
} tag;

static int
add_event(PyObject *events, int kind, Py_ssize_t a, Py_ssize_t b, int c)
{
    /* One per link: built by hand, Py_BuildValue parses its format every time. */
    PyObject *event = PyTuple_New(4);
    if (event == NULL) {
        return -1;
    }
    PyObject *items[4] = {PyLong_FromLong(kind), PyLong_FromSsize_t(a), PyLong_FromSsize_t(b),
                          PyLong_FromLong(c)};
    for (int i = 0; i < 4; i++) {
        if (items[i] == NULL) {
            for (int k = i + 1; k < 4; k++) {
                Py_XDECREF(items[k]);
            }
            Py_DECREF(event);
            return -1;
        }
        PyTuple_SET_ITEM(event, i, items[i]);
    }
    int result = PyList_Append(events, event);
    Py_DECREF(event);
    return result;
}

static int
add_injection(Scanner *self, PyObject *events, Py_ssize_t pos)
{
    if (self->awaiting_injection) {
        self->awaiting_injection = 0;
        return add_event(events, INJECT, pos, pos, 0);
    }
    return 0;
}

static int
push(Scanner *self, int id)
{
    if (self->depth == self->capacity) {
        Py_ssize_t capacity = self->capacity ? self->capacity * 2 : 8;
        int *grown = PyMem_Realloc(self->foreign, (size_t)capacity * sizeof(int));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->foreign = grown;
        self->capacity = capacity;
    }
    self->foreign[self->depth++] = id;
    return 0;
}

static inline int
top(Scanner *self)
{
    return self->depth ? self->foreign[self->depth - 1] : T_OTHER;
}

static void
pop_roots(Scanner *self)
{
    while (self->depth && ROOT(self->foreign[self->depth - 1])) {
        self->depth--;
    }
}

static inline int
self_closing(const unsigned char *b, const tag *t)
{
    return b[t->end - 2] == '/' && t->last_gap < t->end - 1;
}

/* An HREF event for the first href among the tag's attributes, if it has one. */
static int
first_href(Scanner *self, const unsigned char *b, const tag *t, PyObject *events)
{
    if (!self->links) {
        return 0;
    }
    query href = {"href", 4, -1, -1, 0};
    tag_end(b, t->attrs, t->end, NULL, &href, 1);
    if (href.start < 0) {
        return 0;
    }
    return add_event(events, HREF, href.start, href.end, href.quote);
}

/* Whether <annotation-xml encoding> is "text/html" or "application/xhtml+xml"
 * (Unicode lower-cased, as _scan does): 1, 0, or -1 with an exception set. */
static int
html_annotation(Scanner *self, const unsigned char *b, const tag *t)
{
    query encoding = {"encoding", 8, -1, -1, 0};
    tag_end(b, t->attrs, t->end, NULL, &encoding, 1);
    if (encoding.start < 0) {
        return 0;
    }
    Py_ssize_t n = encoding.end - encoding.start;
    const unsigned char *raw = b + encoding.start;
    if (plain(b, encoding.start, encoding.end)) {
        /* PLAIN_ASCII: the value is these bytes as ASCII in every encoding. */
        static const char *const names[] = {"text/html", "application/xhtml+xml"};
        for (int i = 0; i < 2; i++) {
            if ((size_t)n == strlen(names[i])) {
                Py_ssize_t k = 0;
                while (k < n && lower(raw[k]) == (unsigned char)names[i][k]) {
                    k++;
                }
                if (k == n) {
                    return 1;
                }
            }
        }
        return 0;
    }
    /* Character references or non-ASCII bytes: let _tokens.decode_value read it. */
    PyObject *tokens = PyImport_ImportModule("gateway.html._tokens");
    if (tokens == NULL) {
        return -1;
    }
    PyObject *value = PyObject_CallMethod(tokens, "decode_value", "y#O", (const char *)raw, n,
                                          self->encoding);
    Py_DECREF(tokens);
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    PyObject *lowered = PyObject_CallMethod(value, "lower", NULL);
    Py_DECREF(value);
    if (lowered == NULL) {
        return -1;
    }
    int result = PyUnicode_CompareWithASCIIString(lowered, "text/html") == 0 ||
                 PyUnicode_CompareWithASCIIString(lowered, "application/xhtml+xml") == 0;
    Py_DECREF(lowered);
    return result;
}

/* _scan.Scanner._foreign_start_tag: a start tag in svg/math. */
static int
foreign_start_tag(Scanner *self, const unsigned char *b, const tag *t, PyObject *events)
{
    int root = top(self);
    int id = t->id;
    if (root == T_SVG && id == T_A && first_href(self, b, t, events) < 0) {
        return -1;
    }
    if (self_closing(b, t)) {
        return 0;
    }
    if (ROOT(id)) {
        return push(self, id);
    }
    int integration_point;
    if (root == T_SVG) {
        integration_point = id == T_FOREIGNOBJECT || id == T_DESC || id == T_TITLE;
    }
    else if (id == T_ANNOTATION_XML) {
        integration_point = html_annotation(self, b, t);
        if (integration_point < 0) {
            return -1;
        }
    }
    else {
        integration_point = id == T_MI || id == T_MO || id == T_MN || id == T_MS || id == T_MTEXT;
    }
    if (integration_point) {
        if (push(self, id) < 0) {
            return -1;
        }
        self->integration_point_fresh = 1;
    }
    return 0;
}

/* _scan.Scanner._start_tag. */
static int
start_tag(Scanner *self, const unsigned char *b, const tag *t, PyObject *events)
{
    int id = t->id;
    if (self->awaiting_injection) {
        if (id == T_HEAD) {
            return add_injection(self, events, t->end);
        }
        if (add_injection(self, events, t->start) < 0) {
            return -1;
        }
    }
    self->integration_point_fresh = 0;
    if (self->depth && ROOT(top(self))) {
        int breaks_out = BREAKOUT(id);
        if (id == T_FONT) {
            query font[] = {
                {"color", 5, -1, -1, 0}, {"face", 4, -1, -1, 0}, {"size", 4, -1, -1, 0}};
            tag_end(b, t->attrs, t->end, NULL, font, 3);
            breaks_out = font[0].start >= 0 || font[1].start >= 0 || font[2].start >= 0;
        }
        if (!breaks_out) {
            return foreign_start_tag(self, b, t, events);
        }
        pop_roots(self);
    }
    if (ROOT(id)) {
        if (!self_closing(b, t)) {
            return push(self, id);
        }
    }
    else if (LINK(id)) {
        return first_href(self, b, t, events);
    }
    else if (id == T_FORM || id == T_BASE) {
        if (self->links) {
            return add_event(events, id == T_FORM ? FORM : BASE, t->attrs, t->end, 0);
        }
    }
    else if (id == T_SCRIPT) {
        self->mode = M_SCRIPT;
    }
    else if (id == T_PLAINTEXT) {
        self->mode = M_PASSTHROUGH;
        self->gave_up = GAVE_UP_PLAINTEXT;
    }
    else if (TEXT_ELEMENT(id)) {
        self->mode = M_RAW;
        self->end_tag = id;
    }
    return 0;
}

/* _scan.Scanner._end_tag_token: end tags only matter for the foreign-content stack. */
static void
end_tag_token(Scanner *self, int id)
{
    if (!self->depth) {
        return;
    }
    if (ROOT(top(self)) && (id == T_BR || id == T_P)) {
        pop_roots(self);
        return;
    }
    if (id == T_OTHER || id == T_BREAKOUT) {
        return; /* never on the stack */
    }
    for (Py_ssize_t i = self->depth - 1; i >= 0; i--) {
        if (self->foreign[i] == id) {
            self->depth = i;
            return;
        }
    }
}

/*
 * SKIP_HTML: from pos, the longest run of text and complete tokens that need no
 * work, then, if complete, the interesting start tag it stops at (t->id set, and
 * for a link its href in *href). Returns where the run ends: the "<" it could not
 * skip, or the end of the buffer.
 */
static Py_ssize_t
skip_html(const unsigned char *b, Py_ssize_t pos, Py_ssize_t size, int links, tag *t,
          query *href)
{
    for (;;) {
        const unsigned char *lt = memchr(b + pos, '<', (size_t)(size - pos));
        if (lt == NULL) {
            return size;
        }
        Py_ssize_t q = lt - b;
        if (q + 1 >= size) {
            return q;
        }
        if (IS(b[q + 1], C_ALPHA)) {
            Py_ssize_t name = name_end(b, q + 2, size);
            if (name >= size) {
                return q;
            }
            int id = tag_id(b + q + 1, name - q - 1);
            if (INTERESTING(id) && (links || !LINK(id))) {
                int link = LINK(id);
                Py_ssize_t end = tag_end(b, name, size, &t->last_gap, href, link);
                if (end < 0) {
                    return q;
                }
                t->id = id;
                t->start = q;
                t->attrs = name;
                t->end = end;
                return end;
            }
            Py_ssize_t end = tag_end(b, name, size, NULL, NULL, 0);
            if (end < 0) {
                return q;
            }
            pos = end;
            continue;
        }
        unsigned char c = b[q + 1];
        if (c == '/' || c == '!' || c == '?') {
            Py_ssize_t end = skip_markup(b, q, size, 1, 0);
            if (end < 0) {
                return q;
            }
            pos = end;
            continue;
        }
        pos = q + 1; /* _TEXT_LT: a "<" that is text */
    }
}

/* SKIP_FOREIGN: text, comments and bogus comments; it stops at every tag. */
static Py_ssize_t
skip_foreign(const unsigned char *b, Py_ssize_t pos, Py_ssize_t size)
{
    for (;;) {
        const unsigned char *lt = memchr(b + pos, '<', (size_t)(size - pos));
        if (lt == NULL) {
            return size;
        }
        Py_ssize_t q = lt - b;
        if (q + 1 >= size || IS(b[q + 1], C_ALPHA)) {
            return q;
        }
        unsigned char c = b[q + 1];
        if (c == '/' || c == '!' || c == '?') {
            Py_ssize_t end = skip_markup(b, q, size, 0, 1);
            if (end < 0) {
                return q;
            }
            pos = end;
            continue;
        }
        pos = q + 1;
    }
}

/* SKIP_BEFORE_HEAD: whitespace, comments, doctype, end tags and <html> start tags. */
static Py_ssize_t
skip_before_head(const unsigned char *b, Py_ssize_t pos, Py_ssize_t size)
{
    for (;;) {
        while (pos < size && IS(b[pos], C_WS)) {
            pos++;
        }
        if (pos >= size || b[pos] != '<' || pos + 1 >= size) {
            return pos;
        }
        Py_ssize_t end;
        if (IS(b[pos + 1], C_ALPHA)) {
            Py_ssize_t name = name_end(b, pos + 2, size);
            if (name >= size || tag_id(b + pos + 1, name - pos - 1) != T_HTML) {
                return pos;
            }
            end = tag_end(b, name, size, NULL, NULL, 0);
        }
        else {
            end = skip_markup(b, pos, size, 1, 0);
        }
        if (end < 0) {
            return pos;
        }
        pos = end;
    }
}

/* _scan.Scanner._declaration: "<!" the patterns did not skip. */
static Py_ssize_t
declaration(Scanner *self, const unsigned char *b, Py_ssize_t pos, Py_ssize_t size, int final)
{
    Py_ssize_t rest = size - pos < 9 ? size - pos : 9;
    if (rest >= 4 && memcmp(b + pos, "<!--", 4) == 0) {
        if (rest < 6 && !final) {
            return NEED_MORE; /* "<!-->" and "<!--->" are complete comments */
        }
        self->mode = M_COMMENT;
        return pos + 4;
    }
    int foreign = self->depth > 0;
    if (foreign && rest == 9 && memcmp(b + pos, "<![CDATA[", 9) == 0) {
        if (ROOT(top(self)) || self->integration_point_fresh) {
            self->mode = M_CDATA;
        }
        else {
            self->mode = M_PASSTHROUGH;
            self->gave_up = GAVE_UP_AMBIGUITY;
        }
        return pos + 9;
    }
    if (!final && ((rest < 4 && memcmp(b + pos, "<!--", (size_t)rest) == 0) ||
                   (foreign && rest < 9 && memcmp(b + pos, "<![CDATA[", (size_t)rest) == 0))) {
        return NEED_MORE;
    }
    self->mode = M_BOGUS;
    return pos + 2;
}

/* _scan.Scanner._markup: what the patterns stopped at, in the data state. */
static Py_ssize_t
markup(Scanner *self, const unsigned char *b, Py_ssize_t pos, Py_ssize_t size, int final,
       PyObject *events)
{
    if (b[pos] != '<') {
        /* Non-whitespace text before <head>: it opens <head>/<body> implicitly. */
        return add_injection(self, events, pos) < 0 ? FAILED : pos;
    }
    if (pos + 1 >= size) {
        return NEED_MORE;
    }
    unsigned char second = b[pos + 1];
    if (second == '!') {
        return declaration(self, b, pos, size, final);
    }
    if (second == '?') {
        self->mode = M_BOGUS;
        return pos + 2;
    }
    if (second == '/') {
        if (pos + 2 >= size) {
            return NEED_MORE;
        }
        if (!IS(b[pos + 2], C_ALPHA)) {
            self->mode = M_BOGUS;
            return pos + 2;
        }
        /* END_TAG */
        Py_ssize_t name = name_end(b, pos + 3, size);
        Py_ssize_t end = tag_end(b, name, size, NULL, NULL, 0);
        if (end < 0) {
            return NEED_MORE;
        }
        end_tag_token(self, tag_id(b + pos + 2, name - pos - 2));
        return end;
    }
    if (!IS(second, C_ALPHA)) {
        /* "<" that is text (only reached before <head>, the patterns skip it after). */
        return add_injection(self, events, pos) < 0 ? FAILED : pos + 1;
    }
    /* START_TAG */
    tag t;
    t.start = pos;
    t.attrs = name_end(b, pos + 2, size);
    t.end = tag_end(b, t.attrs, size, &t.last_gap, NULL, 0);
    if (t.end < 0) {
        return NEED_MORE;
    }
    t.id = tag_id(b + pos + 1, t.attrs - pos - 1);
    return start_tag(self, b, &t, events) < 0 ? FAILED : t.end;
}

/* -- Text states ---------------------------------------------------------- */

/* bytes.find(needle, pos) over b[0:size]. */
static Py_ssize_t
find(const unsigned char *b, Py_ssize_t pos, Py_ssize_t size, const char *needle, size_t n)
{
    if (pos < 0 || pos + (Py_ssize_t)n > size) {
        return -1;
    }
    /* memmem is not in C99 (nor on Windows): memchr for the first byte. */
    Py_ssize_t last = size - (Py_ssize_t)n;
    while (pos <= last) {
        const unsigned char *first = memchr(b + pos, needle[0], (size_t)(last - pos + 1));
        if (first == NULL) {
            return -1;
        }
        if (memcmp(first + 1, needle + 1, n - 1) == 0) {
            return first - b;
        }
        pos = first - b + 1;
    }
    return -1;
}

/* "(?i:script)" + _TAG_NAME_END at p, within b[0:size]. */
static inline int
script_at(const unsigned char *b, Py_ssize_t p, Py_ssize_t size)
{
    static const char name[] = "script";
    if (p + 6 >= size) {
        return 0;
    }
    for (int k = 0; k < 6; k++) {
        if (lower(b[p + k]) != (unsigned char)name[k]) {
            return 0;
        }
    }
    return IS(b[p + 6], C_NAME_END) != 0;
}

/* _tokens.find_end_tag: where "</name" + delimiter starts, or -1. */
static Py_ssize_t
find_end_tag(const unsigned char *b, Py_ssize_t pos, Py_ssize_t size, const char *name)
{
    Py_ssize_t n = (Py_ssize_t)strlen(name);
    Py_ssize_t end = size - n - 2;
    Py_ssize_t lt = find(b, pos, size, "</", 2);
    while (lt >= 0 && lt < end) {
        Py_ssize_t after = lt + 2 + n;
        if (IS(b[after], C_NAME_END)) {
            Py_ssize_t k = 0;
            while (k < n && lower(b[lt + 2 + k]) == (unsigned char)name[k]) {
                k++;
            }
            if (k == n) {
                return lt;
            }
        }
        lt = find(b, lt + 2, size, "</", 2);
    }
    return -1;
}

/* _tokens.find_script_data_end. */
static Py_ssize_t
find_script_data_end(const unsigned char *b, Py_ssize_t pos, Py_ssize_t size)
{
    Py_ssize_t end_tag = find_end_tag(b, pos, size, "script");
    if (end_tag < 0) {
        return find(b, pos, size, "<!--", 4);
    }
    Py_ssize_t comment = find(b, pos, end_tag, "<!--", 4);
    return comment < 0 ? end_tag : comment;
}

/* _scan.Scanner._text_state: the new position (pos, with the mode unchanged, when
 * more data is needed). */
static Py_ssize_t
text_state(Scanner *self, const unsigned char *b, Py_ssize_t pos, Py_ssize_t size, int final)
{
    Py_ssize_t hold = HOLD_TEXT;
    Py_ssize_t found;
    switch (self->mode) {
    case M_COMMENT:
        /* COMMENT_END: "--!?>" */
        for (Py_ssize_t p = pos; (found = find(b, p, size, "--", 2)) >= 0; p = found + 1) {
            if (found + 2 < size && b[found + 2] == '>') {
                self->mode = M_DATA;
                return found + 3;
            }
            if (found + 3 < size && b[found + 2] == '!' && b[found + 3] == '>') {
                self->mode = M_DATA;
                return found + 4;
            }
        }
        hold = HOLD_COMMENT;
        break;
    case M_BOGUS:
        found = after_gt(b, pos, size);
        if (found >= 0) {
            self->mode = M_DATA;
            return found;
        }
        hold = 0;
        break;
    case M_CDATA:
        found = find(b, pos, size, "]]>", 3);
        if (found >= 0) {
            self->mode = M_DATA;
            return found + 3;
        }
        hold = HOLD_CDATA;
        break;
    case M_RAW:
        found = find_end_tag(b, pos, size, RAW_END_NAMES[self->end_tag]);
        if (found >= 0) {
            self->mode = M_DATA;
            return found;
        }
        break;
    case M_SCRIPT:
        found = find_script_data_end(b, pos, size);
        if (found >= 0) {
            if (b[found + 1] == '!') {
                self->mode = M_SCRIPT_ESCAPED;
                /* The dashes of "<!--" count towards "-->": "<!-->" ends it. */
                return found + 2;
            }
            self->mode = M_DATA;
            return found;
        }
        break;
    case M_SCRIPT_ESCAPED:
    case M_SCRIPT_DOUBLE: {
        /* SCRIPT_ESCAPED: "-->" | "<" "/"? script delimiter;
         * SCRIPT_DOUBLE_ESCAPED: "-->" | "</" script delimiter. Leftmost match. */
        int escaped = self->mode == M_SCRIPT_ESCAPED;
        Py_ssize_t dashes = find(b, pos, size, "-->", 3);
        Py_ssize_t limit = dashes < 0 ? size : dashes;
        for (Py_ssize_t p = pos; p < limit;) {
            const unsigned char *lt = memchr(b + p, '<', (size_t)(limit - p));
            if (lt == NULL) {
                break;
            }
            Py_ssize_t i = lt - b;
            int slash = i + 1 < size && b[i + 1] == '/';
            if ((slash || escaped) && script_at(b, i + 1 + slash, size)) {
                if (!escaped) {
                    self->mode = M_SCRIPT_ESCAPED;
                    return i + 2 + 6 + 1;
                }
                if (slash) {
                    self->mode = M_DATA;
                    return i;
                }
                self->mode = M_SCRIPT_DOUBLE;
                return i + 1 + 6 + 1;
            }
            p = i + 1;
        }
        if (dashes >= 0) {
            self->mode = M_SCRIPT;
            return dashes + 3;
        }
        break;
    }
    }
    if (final) {
        return size;
    }
    return size - hold > pos ? size - hold : pos;
}

/* -- Python interface ------------------------------------------------------ */

static PyObject *
Scanner_scan(Scanner *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "scan() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "scan() argument 1 must be bytes");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "scan() position must not be negative");
        return NULL;
    }
    int final = PyObject_IsTrue(args[2]);
    if (final < 0) {
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    PyObject *events = PyList_New(0);
    if (events == NULL) {
        return NULL;
    }
    while (pos < size) {
        int mode = self->mode;
        if (mode == M_DATA) {
            Py_ssize_t step;
            if (self->awaiting_injection) {
                pos = skip_before_head(b, pos, size);
            }
            else if (self->depth) {
                pos = skip_foreign(b, pos, size);
            }
            else {
                tag t;
                query href = {"href", 4, -1, -1, 0};
                t.id = T_OTHER;
                pos = skip_html(b, pos, size, self->links, &t, &href);
                if (t.id != T_OTHER) {
                    if (LINK(t.id)) {
                        /* The hot path: a link in HTML content, its href read. */
                        if (href.start >= 0 &&
                            add_event(events, HREF, href.start, href.end, href.quote) < 0) {
                            goto failed;
                        }
                    }
                    else if (start_tag(self, b, &t, events) < 0) {
                        goto failed;
                    }
                    continue;
                }
            }
            if (pos >= size) {
                break;
            }
            step = markup(self, b, pos, size, final, events);
            if (step == FAILED) {
                goto failed;
            }
            if (step == NEED_MORE) {
                break;
            }
            pos = step;
        }
        else if (mode == M_PASSTHROUGH) {
            pos = size;
        }
        else {
            Py_ssize_t held = pos;
            pos = text_state(self, b, pos, size, final);
            if (pos == held && self->mode == mode) {
                break;
            }
        }
    }
    if (final) {
        if (self->awaiting_injection && self->mode == M_DATA &&
            add_injection(self, events, pos) < 0) {
            goto failed;
        }
        pos = size;
    }
    PyObject *result = Py_BuildValue("(Nn)", events, pos);
    return result;
failed:
    Py_DECREF(events);
    return NULL;
}

static int
Scanner_init(Scanner *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"encoding", "inject", "links", NULL};
    PyObject *encoding;
    int inject, links;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Upp", keywords, &encoding, &inject, &links)) {
        return -1;
    }
    Py_INCREF(encoding);
    Py_XSETREF(self->encoding, encoding);
    self->awaiting_injection = inject;
    self->links = links;
    self->mode = M_DATA;
    self->end_tag = T_OTHER;
    self->gave_up = 0;
    self->integration_point_fresh = 0;
    self->depth = 0;
    return 0;
}

static void
Scanner_dealloc(Scanner *self)
{
    Py_XDECREF(self->encoding);
    PyMem_Free(self->foreign);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))Scanner_scan, METH_FASTCALL,
     "scan(buf, pos, final) -> (events, stop): as gateway.html._scan.Scanner.scan."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Scanner_members[] = {
    {"gave_up", T_INT, offsetof(Scanner, gave_up), READONLY,
     "0, or why the rest of the document is not tokenized (see _scan.Scanner.gave_up)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.html._speedups.Scanner",
    .tp_doc = "Scanner(encoding, inject, links): gateway.html._scan.Scanner, compiled.",
    .tp_basicsize = sizeof(Scanner),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scanner_init,
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_methods = Scanner_methods,
    .tp_members = Scanner_members,
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway.html._speedups",
    .m_doc = "The rewriter's scanner, compiled (see gateway/html/_scan.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    init_classes();
    if (PyType_Ready(&ScannerType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(module, "Scanner", (PyObject *)&ScannerType) < 0 ||
        PyModule_AddIntConstant(module, "HREF", HREF) < 0 ||
        PyModule_AddIntConstant(module, "INJECT", INJECT) < 0 ||
        PyModule_AddIntConstant(module, "FORM", FORM) < 0 ||
        PyModule_AddIntConstant(module, "BASE", BASE) < 0 ||
        PyModule_AddIntConstant(module, "QUOTE_PLAIN", QUOTE_PLAIN) < 0 ||
        PyModule_AddIntConstant(module, "QUOTE_DOUBLE", QUOTE_DOUBLE) < 0 ||
        PyModule_AddIntConstant(module, "QUOTE_SINGLE", QUOTE_SINGLE) < 0 ||
        PyModule_AddIntConstant(module, "QUOTE_UNQUOTED", QUOTE_UNQUOTED) < 0 ||
        PyModule_AddIntConstant(module, "QUOTE_NONE", QUOTE_NONE) < 0 ||
        PyModule_AddIntConstant(module, "GAVE_UP_AMBIGUITY", GAVE_UP_AMBIGUITY) < 0 ||
        PyModule_AddIntConstant(module, "GAVE_UP_PLAINTEXT", GAVE_UP_PLAINTEXT) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
