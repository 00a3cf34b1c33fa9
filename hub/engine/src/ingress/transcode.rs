//! JSON → MessagePack in one pass over the text, writing each container's length in place.
//!
//! `serde_transcode` into `rmp_serde` gives the same bytes, but JSON never says how many entries
//! an object or array has, so `rmp_serde` encodes every container into a buffer of its own and
//! copies it behind the length at the end: an allocation per container of every input. Here a
//! container's length goes into a slot reserved in front of its entries and the slot is shrunk
//! to the length's real size afterwards (a short move of bytes already in cache).
//!
//! [`Encode`] is also a building block: the ingest rules read the top-level fields they need
//! while the rest of a raw message is encoded (`rules.rs`), so a raw message is parsed once.

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The largest MessagePack container header: marker + u32 length.
const MAX_HEADER: usize = 5;

/// Encode the JSON value `de` reads onto `out` as MessagePack.
pub fn transcode<'de, D: Deserializer<'de>>(de: D, out: &mut Vec<u8>) -> Result<(), D::Error> {
    de.deserialize_any(Encode(out))
}

/// Writes the value it visits onto its buffer as MessagePack.
pub struct Encode<'o>(pub &'o mut Vec<u8>);

/// Where a container's header goes, and what kind of header it is.
pub struct Container {
    at: usize,
    map: bool,
}

impl Container {
    /// Reserve room for a header; entries follow.
    pub fn begin(out: &mut Vec<u8>, map: bool) -> Container {
        let at = out.len();
        out.extend_from_slice(&[0; MAX_HEADER]);
        Container { at, map }
    }

    /// Write the header for `entries` (pairs, for a map) and give back the room it did not need.
    pub fn end<E: Error>(self, out: &mut Vec<u8>, entries: usize) -> Result<(), E> {
        let len = u32::try_from(entries).map_err(|_| E::custom("JSON container too large"))?;
        let mut header = [0u8; MAX_HEADER];
        let mut w = &mut header[..];
        let written = if self.map {
            rmp::encode::write_map_len(&mut w, len)
        } else {
            rmp::encode::write_array_len(&mut w, len)
        };
        written.map_err(E::custom)?;
        let used = MAX_HEADER - w.len();
        out[self.at..self.at + used].copy_from_slice(&header[..used]);
        out.drain(self.at + used..self.at + MAX_HEADER);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Encode<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Encode<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<(), E> {
        rmp::encode::write_bool(self.0, v).map_err(E::custom)
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<(), E> {
        rmp::encode::write_sint(self.0, v).map(drop).map_err(E::custom)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<(), E> {
        rmp::encode::write_uint(self.0, v).map(drop).map_err(E::custom)
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<(), E> {
        rmp::encode::write_f64(self.0, v).map_err(E::custom)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<(), E> {
        rmp::encode::write_str(self.0, v).map_err(E::custom)
    }

    fn visit_unit<E: Error>(self) -> Result<(), E> {
        rmp::encode::write_nil(self.0).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        let container = Container::begin(out, false);
        let mut n = 0;
        while seq.next_element_seed(Encode(&mut *out))?.is_some() {
            n += 1;
        }
        container.end(out, n)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.0;
        let container = Container::begin(out, true);
        let mut n = 0;
        while map.next_key_seed(Encode(&mut *out))?.is_some() {
            map.next_value_seed(Encode(&mut *out))?;
            n += 1;
        }
        container.end(out, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `serde_transcode` into `rmp_serde` (the encoder this one replaces) writes.
    fn reference(json: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut de = serde_json::Deserializer::from_str(json);
        serde_transcode::transcode(&mut de, &mut rmp_serde::Serializer::new(&mut buf)).expect("reference");
        buf
    }

    fn encode(json: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut de = serde_json::Deserializer::from_str(json);
        transcode(&mut de, &mut out).expect("encode");
        de.end().expect("end");
        out
    }

    #[test]
    fn same_bytes_as_transcoding_through_rmp_serde() {
        let big_array = format!("[{}]", vec!["1"; 70_000].join(","));
        let big_map = format!(
            "{{{}}}",
            (0..20).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>().join(",")
        );
        for json in [
            r#"{"visitor":"c1","product":{"sku":"A1","name":"Sh\"oes","price":59.9},"qty":1}"#,
            r#"{"a":[],"b":{},"c":null,"d":true,"e":-5,"f":18446744073709551615,"g":-1.5e300,"h":"é"}"#,
            r#"[[1,[2,[3,{"x":[4]}]]],"s",false]"#,
            "42",
            big_array.as_str(),
            big_map.as_str(),
        ] {
            assert_eq!(encode(json), reference(json), "{json}");
        }
    }

    #[test]
    fn invalid_json_is_an_error() {
        let mut out = Vec::new();
        let mut de = serde_json::Deserializer::from_str(r#"{"a":[1,}"#);
        assert!(transcode(&mut de, &mut out).is_err());
    }
}
