/* The detector's two hottest decoded views in one pass each, JSON string escapes and percent escapes,
 * and the percent-escape shapes that say whether a URL view is needed.
 *
 * Both functions are drop-in equivalents of the pure-Python paths in decode.py (which stay, and are
 * used when this module is not built): tests/detect/test_unescape.py checks them against each other,
 * table-driven and with hypothesis. Neither raises on odd input: an escape that is not one is copied.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* four hex digits at p (the caller checked there are four bytes): the code unit, or -1 */
static long hex4(const unsigned char *p) {
    long v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p[k]);
        if (h < 0) return -1;
        v = (v << 4) | h;
    }
    return v;
}

/* UTF-8 of a code point; a lone surrogate as its three bytes ("surrogatepass") */
static unsigned char *put_utf8(unsigned char *o, unsigned long cp) {
    if (cp < 0x80) {
        *o++ = (unsigned char)cp;
    } else if (cp < 0x800) {
        *o++ = (unsigned char)(0xC0 | (cp >> 6));
        *o++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (unsigned char)(0xE0 | (cp >> 12));
        *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (unsigned char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (unsigned char)(0xF0 | (cp >> 18));
        *o++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        *o++ = (unsigned char)(0x80 | (cp & 0x3F));
    }
    return o;
}

/* the input released, the output cut to what was written (o: one past its last byte) */
static PyObject *finish(Py_buffer *buf, PyObject *out, unsigned char *o) {
    PyBuffer_Release(buf);
    if (_PyBytes_Resize(&out, o - (unsigned char *)PyBytes_AS_STRING(out)) < 0) return NULL;
    return out;
}

PyDoc_STRVAR(json_unescape_doc,
"json_unescape(data: bytes) -> bytes\n\n"
"Every JSON string escape decoded (\\uXXXX to UTF-8, a surrogate pair written as two adjacent escapes\n"
"joined, a lone surrogate kept as its three bytes); every other byte, a backslash that starts no\n"
"escape included, copied. The output is never longer than the input.");

static PyObject *json_unescape(PyObject *self, PyObject *arg) {
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *s = buf.buf;
    Py_ssize_t n = buf.len;
    const unsigned char *first = n ? memchr(s, '\\', (size_t)n) : NULL;
    if (first == NULL) {  /* nothing to decode: the same bytes */
        PyBuffer_Release(&buf);
        if (PyBytes_CheckExact(arg)) { Py_INCREF(arg); return arg; }
        return PyBytes_FromStringAndSize((const char *)s, n);
    }
    /* "\uXXXX" (6 bytes) gives at most 3; a pair (12) gives 4; the rest 1 for 2: never longer */
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) { PyBuffer_Release(&buf); return NULL; }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    Py_ssize_t i = first - s;
    memcpy(o, s, (size_t)i);
    o += i;
    while (i < n) {
        const unsigned char *bs = memchr(s + i, '\\', (size_t)(n - i));
        if (bs == NULL) {
            memcpy(o, s + i, (size_t)(n - i));
            o += n - i;
            break;
        }
        Py_ssize_t j = bs - s;
        memcpy(o, s + i, (size_t)(j - i));
        o += j - i;
        i = j;
        if (i + 1 >= n) { *o++ = '\\'; i++; continue; }
        unsigned char c = s[i + 1], r = 0;
        switch (c) {
            case '"': r = '"'; break;
            case '\\': r = '\\'; break;
            case '/': r = '/'; break;
            case 'b': r = '\b'; break;
            case 'f': r = '\f'; break;
            case 'n': r = '\n'; break;
            case 'r': r = '\r'; break;
            case 't': r = '\t'; break;
            case 'u': r = 1; break;
            default: break;
        }
        if (r == 0) { *o++ = '\\'; i++; continue; }  /* a backslash that starts no escape */
        if (c != 'u') { *o++ = r; i += 2; continue; }
        long u = i + 6 <= n ? hex4(s + i + 2) : -1;
        if (u < 0) { *o++ = '\\'; i++; continue; }
        if (u >= 0xD800 && u <= 0xDBFF && i + 12 <= n && s[i + 6] == '\\' && s[i + 7] == 'u') {
            long lo = hex4(s + i + 8);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
                o = put_utf8(o, 0x10000 + (((unsigned long)u - 0xD800) << 10) + ((unsigned long)lo - 0xDC00));
                i += 12;
                continue;
            }
        }
        o = put_utf8(o, (unsigned long)u);
        i += 6;
    }
    return finish(&buf, out, o);
}

PyDoc_STRVAR(url_unescape_doc,
"url_unescape(data: bytes, form: bool = False, /) -> bytes\n\n"
"Every %XX escape decoded; a '%' without two hex digits copied; with form, '+' is a space\n"
"(an escaped '+', %2B, stays '+'). urllib.parse.unquote_to_bytes, plus the form rule.");

static PyObject *url_unescape(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int form = 0;
    if (!PyArg_ParseTuple(args, "y*|p:url_unescape", &buf, &form)) return NULL;
    const unsigned char *s = buf.buf;
    Py_ssize_t n = buf.len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) { PyBuffer_Release(&buf); return NULL; }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    Py_ssize_t i = 0;
    while (i < n) {
        if (!form) {  /* copy up to the next '%' at memchr speed */
            const unsigned char *pc = memchr(s + i, '%', (size_t)(n - i));
            Py_ssize_t j = pc ? pc - s : n;
            memcpy(o, s + i, (size_t)(j - i));
            o += j - i;
            i = j;
            if (i >= n) break;
        }
        unsigned char c = s[i];
        if (c == '%' && i + 2 < n) {
            int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
            if (h >= 0 && l >= 0) { *o++ = (unsigned char)(h << 4 | l); i += 3; continue; }
        }
        *o++ = (form && c == '+') ? ' ' : c;
        i++;
    }
    return finish(&buf, out, o);
}

PyDoc_STRVAR(pct_shapes_doc,
"pct_shapes(data: bytes, sig: bytes) -> int\n\n"
"Which percent-escape shapes occur in data, as bits (the same as matcher.SHAPES' expressions):\n"
"1 pct %[0-9A-Fa-f]{2}; 2 pct-b64 %(?:2[bBfF]|3[dD]|0[aAdD]); 4 pct-bs %(?:25)*5[cC];\n"
"8 pct-sig: a %XX whose byte b has sig[b] != 0 (sig: 256 bytes). Each '%' is found by memchr.");

static PyObject *pct_shapes(PyObject *self, PyObject *args) {
    Py_buffer buf, sigbuf;
    if (!PyArg_ParseTuple(args, "y*y*:pct_shapes", &buf, &sigbuf)) return NULL;
    if (sigbuf.len != 256) {
        PyBuffer_Release(&buf);
        PyBuffer_Release(&sigbuf);
        PyErr_SetString(PyExc_ValueError, "pct_shapes: sig must be 256 bytes");
        return NULL;
    }
    const unsigned char *s = buf.buf, *sig = sigbuf.buf;
    Py_ssize_t n = buf.len;
    long bits = 0, want = 7;  /* pct-sig can be found only if some byte is significant */
    Py_BEGIN_ALLOW_THREADS
    for (int b = 0; b < 256; b++) if (sig[b]) { want = 15; break; }
    /* percent escapes: stop once every bit that can be set is known */
    const unsigned char *p = s, *end = s + n;
    while ((bits & want) != want && p < end && (p = memchr(p, '%', (size_t)(end - p))) != NULL) {
        if (p + 2 < end) {
            int h = hexval(p[1]), l = hexval(p[2]);
            if (h >= 0 && l >= 0) {
                int b = h << 4 | l;
                bits |= 1;
                if (b == 0x2B || b == 0x2F || b == 0x3D || b == 0x0A || b == 0x0D) bits |= 2;
                if (sig[b]) bits |= 8;
                const unsigned char *q = p + 1;  /* (25)* then 5c */
                while (q + 1 < end && q[0] == '2' && q[1] == '5') q += 2;
                if (q + 1 < end && q[0] == '5' && (q[1] == 'c' || q[1] == 'C')) bits |= 4;
            }
        }
        p++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    PyBuffer_Release(&sigbuf);
    return PyLong_FromLong(bits);
}

static PyMethodDef methods[] = {
    {"pct_shapes", pct_shapes, METH_VARARGS, pct_shapes_doc},
    {"json_unescape", json_unescape, METH_O, json_unescape_doc},
    {"url_unescape", url_unescape, METH_VARARGS, url_unescape_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_unescape",
    "JSON and percent unescaping in C for the detector's views (see decode.py for the Python paths).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__unescape(void) { return PyModule_Create(&module); }
