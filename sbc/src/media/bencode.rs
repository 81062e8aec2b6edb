//! Bencode, the encoding of rtpengine's ng protocol: integers `i42e`, byte strings `5:hello`,
//! lists `l...e` and dictionaries `d...e`.
//!
//! Replies come from the network, so [`decode`] is bounded: nesting depth, total number of
//! values and input length are capped by [`Limits`], every length is checked against what is
//! left of the input before anything is allocated, and no input makes it panic. Decoded strings
//! are slices of the input [`Bytes`] (no copy).

use bytes::Bytes;

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `i<n>e`.
    Int(i64),
    /// `<len>:<bytes>`.
    Bytes(Bytes),
    /// `l<values>e`.
    List(Vec<Value>),
    /// `d<key><value>...e`, in the order of the input (encoding keeps the order it is given).
    Dict(Dict),
}

/// A dictionary: keys and values in order. Lookups are linear: ng dictionaries are small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dict(pub Vec<(Bytes, Value)>);

impl Dict {
    /// An empty dictionary.
    pub fn new() -> Dict {
        Dict(Vec::new())
    }

    /// Appends `key: value` (builder style).
    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Dict {
        self.insert(key, value);
        self
    }

    /// Appends `key: value`.
    pub fn insert(&mut self, key: &'static str, value: impl Into<Value>) {
        self.0
            .push((Bytes::from_static(key.as_bytes()), value.into()));
    }

    /// The first value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_ref() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// The byte string under `key`.
    pub fn bytes(&self, key: &str) -> Option<&Bytes> {
        match self.get(key)? {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The byte string under `key` as UTF-8 text (lossy is not wanted here: `None` if not).
    pub fn str(&self, key: &str) -> Option<&str> {
        std::str::from_utf8(self.bytes(key)?).ok()
    }

    /// The dictionary under `key`.
    pub fn dict(&self, key: &str) -> Option<&Dict> {
        match self.get(key)? {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The integer under `key`.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Whether the dictionary is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Value {
        Value::Bytes(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Bytes(Bytes::from(s))
    }
}

impl From<Bytes> for Value {
    fn from(b: Bytes) -> Value {
        Value::Bytes(b)
    }
}

impl From<Dict> for Value {
    fn from(d: Dict) -> Value {
        Value::Dict(d)
    }
}

impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Value {
        Value::List(l)
    }
}

impl Value {
    /// The dictionary, if this is one.
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// Appends the encoding of `v` to `out`.
pub fn encode_into(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Int(i) => {
            out.push(b'i');
            out.extend_from_slice(i.to_string().as_bytes());
            out.push(b'e');
        }
        Value::Bytes(b) => encode_bytes(b, out),
        Value::List(l) => {
            out.push(b'l');
            for x in l {
                encode_into(x, out);
            }
            out.push(b'e');
        }
        Value::Dict(d) => {
            out.push(b'd');
            for (k, x) in &d.0 {
                encode_bytes(k, out);
                encode_into(x, out);
            }
            out.push(b'e');
        }
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// The encoding of `v`.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(v, &mut out);
    out
}

/// Bounds on what [`decode`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting of lists and dictionaries (the top-level one is depth 1).
    pub max_depth: usize,
    /// Most values in the whole document (every integer, string, list, dictionary and key).
    pub max_values: usize,
    /// Longest input.
    pub max_len: usize,
}

impl Default for Limits {
    /// Generous for ng replies (a query of a call with many streams), small enough that a
    /// hostile datagram costs little: 64 KiB (a UDP datagram), depth 16, 16384 values.
    fn default() -> Limits {
        Limits {
            max_depth: 16,
            max_values: 16_384,
            max_len: 65_536,
        }
    }
}

/// Why an input is not acceptable bencode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends inside a value.
    #[error("bencode: truncated at byte {0}")]
    Truncated(usize),
    /// A byte that cannot start or continue a value.
    #[error("bencode: unexpected byte {byte:#04x} at {at}")]
    Unexpected {
        /// The byte.
        byte: u8,
        /// Its offset.
        at: usize,
    },
    /// An integer or length that is not canonical decimal or does not fit.
    #[error("bencode: bad number at byte {0}")]
    BadNumber(usize),
    /// A string longer than the rest of the input.
    #[error("bencode: string of {len} bytes at {at} runs past the end")]
    StringTooLong {
        /// The declared length.
        len: usize,
        /// Its offset.
        at: usize,
    },
    /// A dictionary key that is not a byte string.
    #[error("bencode: dictionary key at byte {0} is not a string")]
    KeyNotString(usize),
    /// Nesting deeper than [`Limits::max_depth`].
    #[error("bencode: nested deeper than {0}")]
    TooDeep(usize),
    /// More values than [`Limits::max_values`].
    #[error("bencode: more than {0} values")]
    TooMany(usize),
    /// Input longer than [`Limits::max_len`].
    #[error("bencode: input of {0} bytes is too long")]
    TooLong(usize),
    /// Bytes after the value.
    #[error("bencode: {0} trailing bytes")]
    Trailing(usize),
}

/// Decodes exactly one value filling `input`, within `limits`.
pub fn decode(input: &Bytes, limits: Limits) -> Result<Value, DecodeError> {
    if input.len() > limits.max_len {
        return Err(DecodeError::TooLong(input.len()));
    }
    let mut d = Decoder {
        input,
        pos: 0,
        values: 0,
        limits,
    };
    let v = d.value(1)?;
    if d.pos != input.len() {
        return Err(DecodeError::Trailing(input.len() - d.pos));
    }
    Ok(v)
}

struct Decoder<'a> {
    input: &'a Bytes,
    pos: usize,
    values: usize,
    limits: Limits,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated(self.pos))
    }

    fn count(&mut self) -> Result<(), DecodeError> {
        self.values += 1;
        if self.values > self.limits.max_values {
            return Err(DecodeError::TooMany(self.limits.max_values));
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        self.count()?;
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                self.int().map(Value::Int)
            }
            b'0'..=b'9' => self.string().map(Value::Bytes),
            b'l' => {
                self.nest(depth)?;
                let mut l = Vec::new();
                while self.peek()? != b'e' {
                    l.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(l))
            }
            b'd' => {
                self.nest(depth)?;
                let mut d = Vec::new();
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(DecodeError::KeyNotString(self.pos));
                    }
                    self.count()?;
                    let k = self.string()?;
                    let v = self.value(depth + 1)?;
                    d.push((k, v));
                }
                self.pos += 1;
                Ok(Value::Dict(Dict(d)))
            }
            byte => Err(DecodeError::Unexpected { byte, at: self.pos }),
        }
    }

    fn nest(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth > self.limits.max_depth {
            return Err(DecodeError::TooDeep(self.limits.max_depth));
        }
        self.pos += 1;
        Ok(())
    }

    /// Canonical decimal digits up to `end`: no leading zero (except `0` itself), at most 19.
    fn digits(&mut self, end: u8) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut n: u64 = 0;
        loop {
            let b = self.peek()?;
            if b == end {
                break;
            }
            if !b.is_ascii_digit() {
                return Err(DecodeError::Unexpected {
                    byte: b,
                    at: self.pos,
                });
            }
            if self.pos - start >= 19 || (self.pos > start && self.input[start] == b'0') {
                return Err(DecodeError::BadNumber(start));
            }
            n = n * 10 + u64::from(b - b'0');
            self.pos += 1;
        }
        if self.pos == start {
            return Err(DecodeError::BadNumber(start));
        }
        self.pos += 1;
        Ok(n)
    }

    fn int(&mut self) -> Result<i64, DecodeError> {
        let start = self.pos;
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let n = self.digits(b'e')?;
        let n = i64::try_from(n).map_err(|_| DecodeError::BadNumber(start))?;
        if negative {
            if n == 0 {
                return Err(DecodeError::BadNumber(start));
            }
            Ok(-n)
        } else {
            Ok(n)
        }
    }

    fn string(&mut self) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let len = self.digits(b':')?;
        let left = self.input.len() - self.pos;
        let len =
            usize::try_from(len)
                .ok()
                .filter(|&l| l <= left)
                .ok_or(DecodeError::StringTooLong {
                    len: usize::try_from(len).unwrap_or(usize::MAX),
                    at,
                })?;
        let s = self.input.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &[u8]) -> Result<Value, DecodeError> {
        decode(&Bytes::copy_from_slice(s), Limits::default())
    }

    #[test]
    fn round_trip_of_an_ng_dictionary() {
        let v = Value::Dict(
            Dict::new()
                .with("command", "offer")
                .with("call-id", "a@b")
                .with("replace", vec![Value::from("origin")])
                .with("n", -42)
                .with("codec", Dict::new().with("strip", vec![Value::from("all")])),
        );
        let e = encode(&v);
        assert_eq!(
            e,
            b"d7:command5:offer7:call-id3:a@b7:replacel6:origine1:ni-42e5:codecd5:stripl3:alleee"
        );
        assert_eq!(dec(&e).unwrap(), v);
    }

    #[test]
    fn accessors() {
        let v = dec(b"d6:result2:ok3:sdp3:v=01:ii7e1:dde1:bi1ee").unwrap();
        let d = v.as_dict().unwrap();
        assert_eq!(d.str("result"), Some("ok"));
        assert_eq!(d.bytes("sdp").map(|b| b.as_ref()), Some(&b"v=0"[..]));
        assert_eq!(d.int("i"), Some(7));
        assert!(d.dict("d").unwrap().is_empty());
        assert_eq!(d.str("i"), None);
        assert_eq!(d.get("missing"), None);
    }

    #[test]
    fn numbers_must_be_canonical() {
        assert_eq!(dec(b"i0e").unwrap(), Value::Int(0));
        assert_eq!(dec(b"i-7e").unwrap(), Value::Int(-7));
        assert_eq!(dec(b"i9223372036854775807e").unwrap(), Value::Int(i64::MAX));
        for bad in [
            &b"i-0e"[..],
            b"i03e",
            b"ie",
            b"i-e",
            b"i9223372036854775808e",
            b"i99999999999999999999e",
            b"01:a",
        ] {
            assert!(
                dec(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(dec(b"0:").unwrap(), Value::Bytes(Bytes::new()));
    }

    #[test]
    fn hostile_inputs_are_refused_without_panicking() {
        assert_eq!(dec(b""), Err(DecodeError::Truncated(0)));
        assert_eq!(dec(b"d"), Err(DecodeError::Truncated(1)));
        assert_eq!(dec(b"l"), Err(DecodeError::Truncated(1)));
        assert_eq!(dec(b"i12"), Err(DecodeError::Truncated(3)));
        assert_eq!(
            dec(b"5:abc"),
            Err(DecodeError::StringTooLong { len: 5, at: 0 })
        );
        assert!(matches!(
            dec(b"999999999999999999:x"),
            Err(DecodeError::StringTooLong { .. })
        ));
        assert!(matches!(
            dec(b"99999999999999999999:x"),
            Err(DecodeError::BadNumber(0))
        ));
        assert_eq!(dec(b"di1e1:ae"), Err(DecodeError::KeyNotString(1)));
        assert_eq!(
            dec(b"x"),
            Err(DecodeError::Unexpected { byte: b'x', at: 0 })
        );
        assert_eq!(dec(b"i1ei2e"), Err(DecodeError::Trailing(3)));
        assert!(matches!(dec(b"3-abc"), Err(DecodeError::Unexpected { .. })));
        // Deep nesting: refused at the limit, not by the stack.
        let deep = [vec![b'l'; 30_000], vec![b'e'; 30_000]].concat();
        assert_eq!(dec(&deep), Err(DecodeError::TooDeep(16)));
        // Many values.
        let mut many = vec![b'l'];
        many.extend(std::iter::repeat_n(&b"i1e"[..], 20_000).flatten());
        many.push(b'e');
        assert_eq!(dec(&many), Err(DecodeError::TooMany(16_384)));
        // Too long.
        let long = vec![b'0'; 70_000];
        assert_eq!(dec(&long), Err(DecodeError::TooLong(70_000)));
    }

    #[test]
    fn every_prefix_and_every_byte_flip_of_a_reply_is_handled() {
        let good = b"d3:sdp19:v=0\r\no=- 1 1 IN IP46:result2:ok4:tagsd1:ad3:tagl1:xi1eeeee";
        assert!(dec(good).is_ok());
        for n in 0..good.len() {
            assert!(dec(&good[..n]).is_err());
        }
        for i in 0..good.len() {
            for b in [0u8, b'e', b'd', b'l', b'i', b'9', b':', b'-', 0xff] {
                let mut m = good.to_vec();
                m[i] = b;
                let _ = dec(&m);
            }
        }
    }

    #[test]
    fn strings_are_slices_of_the_input() {
        let input = Bytes::from_static(b"l5:hello5:worlde");
        let v = decode(&input, Limits::default()).unwrap();
        let Value::List(l) = v else { panic!() };
        let s = l[0].as_bytes().unwrap();
        assert_eq!(s.as_ref(), b"hello");
        assert_eq!(s.as_ptr(), input[3..].as_ptr());
    }
}
