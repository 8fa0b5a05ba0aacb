//! The age v1 file format (<https://age-encryption.org/v1>), for the two recipient types Keel
//! uses: a passphrase (scrypt) and an X25519 key, as `age-keygen` writes it.
//!
//! Files are encrypted and decrypted whole in memory: the secret store is small, and holding it
//! at once lets the last chunk of the payload be found without reading ahead. A file written
//! here is read by `age -d`, and a file written by `age -e` is read here.
//!
//! What is checked on reading, so that a damaged or forged file is an error, never a panic or a
//! wrong value: the version line, every stanza's shape, canonical base64 with lines of 64
//! columns, the header's MAC, each payload chunk's tag, the last chunk's flag (a file cut at a
//! chunk boundary is caught), and that a scrypt stanza is alone.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

const VERSION_LINE: &str = "age-encryption.org/v1";
const X25519_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
const SCRYPT_LABEL: &[u8] = b"age-encryption.org/v1/scrypt";
const SECRET_KEY_HRP: &str = "age-secret-key-";
const PUBLIC_KEY_HRP: &str = "age";
const FILE_KEY_LEN: usize = 16;
const CHUNK_LEN: usize = 64 * 1024;
const TAG_LEN: usize = 16;
const PAYLOAD_NONCE_LEN: usize = 16;
const COLUMNS: usize = 64;

/// The scrypt work factor (log2 of N) Keel encrypts with: the one `age` uses, about a second.
pub const DEFAULT_WORK_FACTOR: u8 = 18;
/// The highest scrypt work factor Keel accepts when decrypting, as `age` does: a higher one
/// could make a crafted file take minutes and gigabytes to open.
pub const MAX_WORK_FACTOR: u8 = 22;

/// Why a file could not be encrypted or decrypted. No variant carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum AgeError {
    #[error("not an age file (it does not start with \"{VERSION_LINE}\")")]
    NotAgeFile,
    #[error("malformed age header: {reason}")]
    MalformedHeader { reason: String },
    #[error("the passphrase does not decrypt this file")]
    WrongPassphrase,
    #[error("the key does not decrypt this file")]
    WrongKey,
    #[error("the file is encrypted for {found}, not for {wanted}")]
    OtherRecipient { found: String, wanted: &'static str },
    #[error(
        "the file's scrypt work factor {work_factor} is above the highest accepted, {MAX_WORK_FACTOR}"
    )]
    WorkFactorTooHigh { work_factor: u8 },
    #[error("the age header was changed after it was written (its MAC does not match)")]
    HeaderMac,
    #[error("the encrypted payload is {0}")]
    Payload(&'static str),
    #[error("malformed age identity: {0}")]
    BadIdentity(String),
    #[error("the system's random number generator failed: {0}")]
    Random(String),
}

/// Whom a file is encrypted for.
pub enum Recipient {
    /// A passphrase, stretched with scrypt at `work_factor` (log2 of N).
    Passphrase {
        passphrase: Zeroizing<String>,
        work_factor: u8,
    },
    /// The public half of an X25519 identity.
    X25519(x25519_dalek::PublicKey),
}

/// What decrypts a file.
pub enum Identity {
    Passphrase(Zeroizing<String>),
    X25519(X25519Identity),
}

/// An X25519 identity: `AGE-SECRET-KEY-1…`. Its Debug never shows the key.
#[derive(Clone)]
pub struct X25519Identity {
    secret: x25519_dalek::StaticSecret,
}

impl std::fmt::Debug for X25519Identity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "X25519Identity({})", self.recipient_string())
    }
}

impl X25519Identity {
    /// A new random identity.
    pub fn generate() -> Result<Self, AgeError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        random(bytes.as_mut())?;
        Ok(Self {
            secret: x25519_dalek::StaticSecret::from(*bytes),
        })
    }

    /// Parses `AGE-SECRET-KEY-1…` (either case).
    pub fn parse(text: &str) -> Result<Self, AgeError> {
        let (hrp, data) = bech32::decode(text.trim()).map_err(|_| {
            AgeError::BadIdentity("not a valid AGE-SECRET-KEY-1… string (bad bech32)".to_string())
        })?;
        if hrp.to_lowercase() != SECRET_KEY_HRP {
            return Err(AgeError::BadIdentity(format!(
                "it starts with \"{}1\", not \"AGE-SECRET-KEY-1\"",
                hrp.to_lowercase().to_uppercase()
            )));
        }
        let data = Zeroizing::new(data);
        let bytes: [u8; 32] = data.as_slice().try_into().map_err(|_| {
            AgeError::BadIdentity(format!("the key is {} bytes, not 32", data.len()))
        })?;
        Ok(Self {
            secret: x25519_dalek::StaticSecret::from(bytes),
        })
    }

    /// Finds the identity in the text of a key file as `age-keygen` writes it: comment lines
    /// starting with `#`, blank lines, and one `AGE-SECRET-KEY-1…` line.
    pub fn from_key_file(text: &str) -> Result<Self, AgeError> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        let Some(line) = lines.next() else {
            return Err(AgeError::BadIdentity(
                "the key file holds no AGE-SECRET-KEY-1… line".to_string(),
            ));
        };
        if lines.next().is_some() {
            return Err(AgeError::BadIdentity(
                "the key file holds more than one key".to_string(),
            ));
        }
        Self::parse(line)
    }

    /// The identity as `AGE-SECRET-KEY-1…`, for writing a key file.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let hrp = bech32::Hrp::parse(SECRET_KEY_HRP).expect("a valid human-readable part");
        let bytes = Zeroizing::new(self.secret.to_bytes());
        Zeroizing::new(
            bech32::encode_upper::<bech32::Bech32>(hrp, bytes.as_ref())
                .expect("32 bytes fit in bech32"),
        )
    }

    /// The public half, to encrypt to.
    pub fn recipient(&self) -> Recipient {
        Recipient::X25519(x25519_dalek::PublicKey::from(&self.secret))
    }

    /// The public half as `age1…`, as `age -r` takes it.
    pub fn recipient_string(&self) -> String {
        let public = x25519_dalek::PublicKey::from(&self.secret);
        let hrp = bech32::Hrp::parse(PUBLIC_KEY_HRP).expect("a valid human-readable part");
        bech32::encode_lower::<bech32::Bech32>(hrp, public.as_bytes())
            .expect("32 bytes fit in bech32")
    }
}

/// Parses an `age1…` recipient.
pub fn parse_recipient(text: &str) -> Result<Recipient, AgeError> {
    let (hrp, data) = bech32::decode(text.trim()).map_err(|_| {
        AgeError::BadIdentity("not a valid age1… recipient (bad bech32)".to_string())
    })?;
    if hrp.to_lowercase() != PUBLIC_KEY_HRP {
        return Err(AgeError::BadIdentity(
            "a recipient starts with \"age1\"".to_string(),
        ));
    }
    let bytes: [u8; 32] = data.as_slice().try_into().map_err(|_| {
        AgeError::BadIdentity(format!("the recipient is {} bytes, not 32", data.len()))
    })?;
    Ok(Recipient::X25519(x25519_dalek::PublicKey::from(bytes)))
}

/// Encrypts `plaintext` for `recipient` into a binary age file.
pub fn encrypt(recipient: &Recipient, plaintext: &[u8]) -> Result<Vec<u8>, AgeError> {
    let mut file_key = Zeroizing::new([0u8; FILE_KEY_LEN]);
    random(file_key.as_mut())?;
    let stanza = match recipient {
        Recipient::Passphrase {
            passphrase,
            work_factor,
        } => {
            let mut salt = [0u8; 16];
            random(&mut salt)?;
            let wrap_key = scrypt_key(passphrase.as_bytes(), &salt, *work_factor)?;
            Stanza {
                kind: "scrypt".to_string(),
                args: vec![STANDARD_NO_PAD.encode(salt), work_factor.to_string()],
                body: seal_zero_nonce(&wrap_key, file_key.as_ref()),
            }
        }
        Recipient::X25519(public) => {
            let mut ephemeral = Zeroizing::new([0u8; 32]);
            random(ephemeral.as_mut())?;
            let ephemeral = x25519_dalek::StaticSecret::from(*ephemeral);
            let share = x25519_dalek::PublicKey::from(&ephemeral);
            let shared = ephemeral.diffie_hellman(public);
            if !shared.was_contributory() {
                return Err(AgeError::BadIdentity(
                    "the recipient is a low-order point".to_string(),
                ));
            }
            let wrap_key = x25519_wrap_key(shared.as_bytes(), share.as_bytes(), public.as_bytes());
            Stanza {
                kind: "X25519".to_string(),
                args: vec![STANDARD_NO_PAD.encode(share.as_bytes())],
                body: seal_zero_nonce(&wrap_key, file_key.as_ref()),
            }
        }
    };
    let mut header = format!("{VERSION_LINE}\n");
    stanza.write(&mut header);
    header.push_str("---");
    let mac = header_mac(file_key.as_ref(), header.as_bytes());
    let mut out = header.into_bytes();
    out.push(b' ');
    out.extend_from_slice(STANDARD_NO_PAD.encode(mac).as_bytes());
    out.push(b'\n');

    let mut nonce = [0u8; PAYLOAD_NONCE_LEN];
    random(&mut nonce)?;
    out.extend_from_slice(&nonce);
    let cipher = ChaCha20Poly1305::new(&payload_key(file_key.as_ref(), &nonce));
    let chunk_count = plaintext.len().div_ceil(CHUNK_LEN).max(1);
    for index in 0..chunk_count {
        let chunk = &plaintext[index * CHUNK_LEN..((index + 1) * CHUNK_LEN).min(plaintext.len())];
        let sealed = cipher
            .encrypt(&chunk_nonce(index as u64, index + 1 == chunk_count), chunk)
            .expect("ChaCha20-Poly1305 encrypts any chunk of 64 KiB");
        out.extend_from_slice(&sealed);
    }
    Ok(out)
}

/// Decrypts a binary age file with `identity`.
pub fn decrypt(identity: &Identity, file: &[u8]) -> Result<Zeroizing<Vec<u8>>, AgeError> {
    let header = Header::parse(file)?;
    let file_key = match identity {
        Identity::Passphrase(passphrase) => unwrap_scrypt(&header, passphrase)?,
        Identity::X25519(identity) => unwrap_x25519(&header, identity)?,
    };
    let expected = header_mac(file_key.as_ref(), &file[..header.mac_input_len]);
    if !constant_time_eq(&expected, &header.mac) {
        return Err(AgeError::HeaderMac);
    }
    decrypt_payload(file_key.as_ref(), &file[header.len..])
}

/// The types of the file's stanzas (`X25519`, `scrypt`, …), to say whom a file is for.
pub fn recipient_types(file: &[u8]) -> Result<Vec<String>, AgeError> {
    Ok(Header::parse(file)?
        .stanzas
        .into_iter()
        .map(|stanza| stanza.kind)
        .collect())
}

fn unwrap_scrypt(
    header: &Header,
    passphrase: &str,
) -> Result<Zeroizing<[u8; FILE_KEY_LEN]>, AgeError> {
    let scrypt_stanzas: Vec<&Stanza> = header
        .stanzas
        .iter()
        .filter(|stanza| stanza.kind == "scrypt")
        .collect();
    let Some(stanza) = scrypt_stanzas.first() else {
        return Err(other_recipient(header, "a passphrase"));
    };
    if header.stanzas.len() != 1 {
        return Err(malformed(
            "a scrypt stanza must be the only stanza in the header",
        ));
    }
    let [salt, work_factor] = stanza.args.as_slice() else {
        return Err(malformed("a scrypt stanza takes a salt and a work factor"));
    };
    let salt = decode_exact::<16>(salt, "the scrypt salt")?;
    let work_factor: u8 = match work_factor.parse() {
        Ok(value) if value > 0 && !work_factor.starts_with('0') => value,
        _ => {
            return Err(malformed(&format!(
                "the scrypt work factor {work_factor:?} is not a positive decimal number"
            )));
        }
    };
    if work_factor > MAX_WORK_FACTOR {
        return Err(AgeError::WorkFactorTooHigh { work_factor });
    }
    let wrap_key = scrypt_key(passphrase.as_bytes(), &salt, work_factor)?;
    open_file_key(&wrap_key, &stanza.body).ok_or(AgeError::WrongPassphrase)
}

fn unwrap_x25519(
    header: &Header,
    identity: &X25519Identity,
) -> Result<Zeroizing<[u8; FILE_KEY_LEN]>, AgeError> {
    let public = x25519_dalek::PublicKey::from(&identity.secret);
    let mut saw_x25519 = false;
    for stanza in header
        .stanzas
        .iter()
        .filter(|stanza| stanza.kind == "X25519")
    {
        saw_x25519 = true;
        let [share] = stanza.args.as_slice() else {
            return Err(malformed("an X25519 stanza takes one argument"));
        };
        let share = decode_exact::<32>(share, "the X25519 share")?;
        let share = x25519_dalek::PublicKey::from(share);
        let shared = identity.secret.diffie_hellman(&share);
        if !shared.was_contributory() {
            return Err(malformed("the X25519 share is a low-order point"));
        }
        let wrap_key = x25519_wrap_key(shared.as_bytes(), share.as_bytes(), public.as_bytes());
        if let Some(file_key) = open_file_key(&wrap_key, &stanza.body) {
            return Ok(file_key);
        }
    }
    if saw_x25519 {
        Err(AgeError::WrongKey)
    } else {
        Err(other_recipient(header, "an X25519 key"))
    }
}

fn other_recipient(header: &Header, wanted: &'static str) -> AgeError {
    let kinds: Vec<&str> = header
        .stanzas
        .iter()
        .map(|stanza| stanza.kind.as_str())
        .collect();
    let found = match kinds.as_slice() {
        ["scrypt"] => "a passphrase".to_string(),
        ["X25519", ..] => "an X25519 key".to_string(),
        _ => format!("recipient types {}", kinds.join(", ")),
    };
    AgeError::OtherRecipient { found, wanted }
}

fn decrypt_payload(file_key: &[u8], payload: &[u8]) -> Result<Zeroizing<Vec<u8>>, AgeError> {
    if payload.len() < PAYLOAD_NONCE_LEN {
        return Err(AgeError::Payload("truncated (no payload nonce)"));
    }
    let (nonce, mut rest) = payload.split_at(PAYLOAD_NONCE_LEN);
    let cipher = ChaCha20Poly1305::new(&payload_key(file_key, nonce));
    let mut plaintext = Zeroizing::new(Vec::with_capacity(rest.len()));
    let mut index: u64 = 0;
    loop {
        if rest.len() < TAG_LEN {
            return Err(AgeError::Payload(
                "truncated (a chunk is shorter than its tag)",
            ));
        }
        let last = rest.len() <= CHUNK_LEN + TAG_LEN;
        let (chunk, after) = rest.split_at(if last {
            rest.len()
        } else {
            CHUNK_LEN + TAG_LEN
        });
        let opened = cipher
            .decrypt(&chunk_nonce(index, last), chunk)
            .map_err(|_| {
                if last {
                    AgeError::Payload("truncated or changed (the last chunk does not authenticate)")
                } else {
                    AgeError::Payload("changed (a chunk does not authenticate)")
                }
            })?;
        let opened = Zeroizing::new(opened);
        if last && opened.is_empty() && index > 0 {
            return Err(AgeError::Payload(
                "malformed (an empty last chunk after others)",
            ));
        }
        plaintext.extend_from_slice(&opened);
        if last {
            return Ok(plaintext);
        }
        rest = after;
        index += 1;
    }
}

struct Stanza {
    kind: String,
    args: Vec<String>,
    body: Vec<u8>,
}

impl Stanza {
    fn write(&self, out: &mut String) {
        out.push_str("-> ");
        out.push_str(&self.kind);
        for arg in &self.args {
            out.push(' ');
            out.push_str(arg);
        }
        out.push('\n');
        let encoded = STANDARD_NO_PAD.encode(&self.body);
        for line in encoded.as_bytes().chunks(COLUMNS) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        // The body ends with a line shorter than 64 columns, so a full last line is followed by
        // an empty one.
        if encoded.len().is_multiple_of(COLUMNS) {
            out.push('\n');
        }
    }
}

/// Reads a header line by line.
struct Lines<'a> {
    file: &'a [u8],
    position: usize,
}

impl<'a> Lines<'a> {
    /// The next line without its newline, and where it starts.
    fn next(&mut self, what: &str) -> Result<(usize, &'a [u8]), AgeError> {
        let start = self.position;
        let Some(end) = self.file[start..].iter().position(|&byte| byte == b'\n') else {
            return Err(malformed(&format!("the header ends before {what}")));
        };
        self.position = start + end + 1;
        Ok((start, &self.file[start..start + end]))
    }
}

struct Header {
    stanzas: Vec<Stanza>,
    mac: Vec<u8>,
    /// The bytes the MAC covers: up to and including `---`.
    mac_input_len: usize,
    /// The header's length, including the MAC line's newline.
    len: usize,
}

impl Header {
    fn parse(file: &[u8]) -> Result<Self, AgeError> {
        let mut lines = Lines { file, position: 0 };
        let version_end = VERSION_LINE.len() + 1;
        if file.len() < version_end
            || &file[..version_end] != format!("{VERSION_LINE}\n").as_bytes()
        {
            return Err(AgeError::NotAgeFile);
        }
        lines.next("the version line")?;
        let mut stanzas = Vec::new();
        let (mut line_start, mut line) = lines.next("the first stanza")?;
        loop {
            if let Some(mac) = line.strip_prefix(b"--- ") {
                if stanzas.is_empty() {
                    return Err(malformed("the header has no stanza"));
                }
                let mac =
                    std::str::from_utf8(mac).map_err(|_| malformed("the MAC is not ASCII"))?;
                let mac = decode_exact::<32>(mac, "the header MAC")?;
                return Ok(Self {
                    stanzas,
                    mac: mac.to_vec(),
                    mac_input_len: line_start + 3,
                    len: lines.position,
                });
            }
            let Some(arguments) = line.strip_prefix(b"-> ") else {
                return Err(malformed(
                    "a line that should start a stanza (\"-> \") or end the header (\"--- \") does neither",
                ));
            };
            let arguments = std::str::from_utf8(arguments)
                .map_err(|_| malformed("a stanza line is not ASCII"))?;
            let mut words = Vec::new();
            for word in arguments.split(' ') {
                if word.is_empty() || !word.bytes().all(|byte| (0x21..=0x7e).contains(&byte)) {
                    return Err(malformed(
                        "a stanza argument is empty or has characters other than printable ASCII",
                    ));
                }
                words.push(word.to_string());
            }
            let kind = words.remove(0);
            let mut body_text = String::new();
            loop {
                let (_, body_line) = lines.next("the end of a stanza's body")?;
                if body_line.len() > COLUMNS {
                    return Err(malformed("a stanza body line is longer than 64 columns"));
                }
                body_text.push_str(
                    std::str::from_utf8(body_line)
                        .map_err(|_| malformed("a stanza body is not ASCII"))?,
                );
                if body_line.len() < COLUMNS {
                    break;
                }
            }
            let body = STANDARD_NO_PAD
                .decode(&body_text)
                .map_err(|_| malformed("a stanza body is not canonical base64"))?;
            stanzas.push(Stanza {
                kind,
                args: words,
                body,
            });
            (line_start, line) = lines.next("the MAC line")?;
        }
    }
}

fn malformed(reason: &str) -> AgeError {
    AgeError::MalformedHeader {
        reason: reason.to_string(),
    }
}

fn decode_exact<const N: usize>(text: &str, what: &str) -> Result<[u8; N], AgeError> {
    let bytes = STANDARD_NO_PAD
        .decode(text)
        .map_err(|_| malformed(&format!("{what} is not canonical base64")))?;
    bytes
        .try_into()
        .map_err(|_| malformed(&format!("{what} is not {N} bytes")))
}

fn random(buffer: &mut [u8]) -> Result<(), AgeError> {
    getrandom::getrandom(buffer).map_err(|error| AgeError::Random(error.to_string()))
}

fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    key
}

fn scrypt_key(
    passphrase: &[u8],
    salt: &[u8; 16],
    work_factor: u8,
) -> Result<Zeroizing<[u8; 32]>, AgeError> {
    let params = scrypt::Params::new(work_factor, 8, 1, 32).map_err(|_| {
        malformed(&format!(
            "the scrypt work factor {work_factor} is out of range"
        ))
    })?;
    let mut full_salt = SCRYPT_LABEL.to_vec();
    full_salt.extend_from_slice(salt);
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(passphrase, &full_salt, &params, key.as_mut())
        .expect("32 bytes is a valid scrypt length");
    Ok(key)
}

fn x25519_wrap_key(
    shared: &[u8; 32],
    share: &[u8; 32],
    recipient: &[u8; 32],
) -> Zeroizing<[u8; 32]> {
    let mut salt = share.to_vec();
    salt.extend_from_slice(recipient);
    hkdf(shared, &salt, X25519_LABEL)
}

fn seal_zero_nonce(key: &[u8; 32], file_key: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(&Nonce::default(), file_key)
        .expect("ChaCha20-Poly1305 encrypts 16 bytes")
}

fn open_file_key(key: &[u8; 32], body: &[u8]) -> Option<Zeroizing<[u8; FILE_KEY_LEN]>> {
    if body.len() != FILE_KEY_LEN + TAG_LEN {
        return None;
    }
    let opened = Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(&Nonce::default(), body)
            .ok()?,
    );
    let mut file_key = Zeroizing::new([0u8; FILE_KEY_LEN]);
    file_key.copy_from_slice(&opened);
    Some(file_key)
}

fn header_mac(file_key: &[u8], header: &[u8]) -> [u8; 32] {
    let key = hkdf(file_key, &[], b"header");
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
    mac.update(header);
    mac.finalize().into_bytes().into()
}

fn payload_key(file_key: &[u8], nonce: &[u8]) -> Key {
    *Key::from_slice(hkdf(file_key, nonce, b"payload").as_ref())
}

fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::from(nonce)
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passphrase(text: &str) -> Zeroizing<String> {
        Zeroizing::new(text.to_string())
    }

    #[test]
    fn round_trips_across_chunk_boundaries() {
        let identity = X25519Identity::generate().unwrap();
        for length in [0, 1, CHUNK_LEN - 1, CHUNK_LEN, CHUNK_LEN + 1, 2 * CHUNK_LEN] {
            let plaintext: Vec<u8> = (0..length).map(|index| (index % 251) as u8).collect();
            let file = encrypt(&identity.recipient(), &plaintext).unwrap();
            let opened = decrypt(&Identity::X25519(identity.clone()), &file).unwrap();
            assert_eq!(*opened, plaintext, "length {length}");
        }
    }

    #[test]
    fn a_file_cut_at_a_chunk_boundary_is_refused() {
        let identity = X25519Identity::generate().unwrap();
        let file = encrypt(&identity.recipient(), &vec![7u8; 2 * CHUNK_LEN]).unwrap();
        let cut = &file[..file.len() - (CHUNK_LEN + TAG_LEN)];
        let error = decrypt(&Identity::X25519(identity), cut).unwrap_err();
        assert!(matches!(error, AgeError::Payload(_)), "{error}");
    }

    #[test]
    fn a_wrong_passphrase_and_a_wrong_key_are_told_apart_from_damage() {
        let recipient = Recipient::Passphrase {
            passphrase: passphrase("right"),
            work_factor: 10,
        };
        let file = encrypt(&recipient, b"value").unwrap();
        assert!(matches!(
            decrypt(&Identity::Passphrase(passphrase("wrong")), &file),
            Err(AgeError::WrongPassphrase)
        ));
        let other = X25519Identity::generate().unwrap();
        assert!(matches!(
            decrypt(&Identity::X25519(other.clone()), &file),
            Err(AgeError::OtherRecipient { .. })
        ));
        let for_key = encrypt(&X25519Identity::generate().unwrap().recipient(), b"value").unwrap();
        assert!(matches!(
            decrypt(&Identity::X25519(other), &for_key),
            Err(AgeError::WrongKey)
        ));
    }

    #[test]
    fn every_single_byte_change_is_an_error_never_a_panic_or_a_value() {
        let recipient = Recipient::Passphrase {
            passphrase: passphrase("p"),
            work_factor: 2,
        };
        let file = encrypt(&recipient, b"{\"A\":\"b\"}").unwrap();
        for index in 0..file.len() {
            let mut changed = file.clone();
            changed[index] ^= 0x01;
            assert!(
                decrypt(&Identity::Passphrase(passphrase("p")), &changed).is_err(),
                "byte {index}"
            );
        }
        for length in 0..file.len() {
            assert!(
                decrypt(&Identity::Passphrase(passphrase("p")), &file[..length]).is_err(),
                "length {length}"
            );
        }
    }

    #[test]
    fn identities_round_trip_through_their_strings() {
        let identity = X25519Identity::generate().unwrap();
        let text = identity.to_secret_string();
        assert!(text.starts_with("AGE-SECRET-KEY-1"));
        let again =
            X25519Identity::from_key_file(&format!("# created: now\n# public key: x\n{}\n", *text))
                .unwrap();
        assert_eq!(again.recipient_string(), identity.recipient_string());
        assert!(identity.recipient_string().starts_with("age1"));
        assert!(!format!("{identity:?}").contains(&text[20..]));
        assert!(X25519Identity::parse("AGE-SECRET-KEY-1QQQ").is_err());
        assert!(X25519Identity::from_key_file("# nothing\n").is_err());
    }
}
