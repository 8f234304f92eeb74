//! Where an HTTP/1 connection is in its request/response cycle, read from its bytes: the end
//! of a request head, the request line's raw bytes, interim responses.

/// Where the connection is in its request/response cycle, as seen from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading a request head (the deadline runs).
    Head,
    /// The head is complete: body, response, or pipelined data (no deadline).
    Body,
    /// A response was written: the next bytes read may start a new head.
    Idle,
}

/// What the bytes of one request line showed. pingora 0.9.1 re-parses a request line that
/// httparse refused after percent-encoding spaces, controls and `"<>` in it
/// (`escape_illegal_request_line`), so `GET /a b HTTP/1.1` reaches the phases as `/a%20b`;
/// only the raw bytes still tell such a line from a well-formed one (nginx answers 400).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLine {
    /// The line's end has been seen.
    pub done: bool,
    /// A byte other than CR/LF has been seen (empty lines may precede a request line).
    started: bool,
    /// Spaces seen (a request line has exactly two).
    spaces: u8,
    /// A byte no request line may hold raw, or a third space.
    pub bad: bool,
}

impl RequestLine {
    /// Advances over `bytes`, which continue the head from where the last call stopped.
    pub fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            match b {
                b'\n' if self.started => self.done = true,
                b'\r' | b'\n' => {}
                b' ' => {
                    self.started = true;
                    self.spaces += 1;
                    self.bad |= self.spaces > 2;
                }
                0..=0x1f | 0x7f..=0xff | b'"' | b'<' | b'>' => {
                    self.started = true;
                    self.bad = true;
                }
                _ => self.started = true,
            }
        }
    }
}

/// Whether a write is an interim (1xx) response head: the final response is still to come, so
/// the request (and its body, e.g. after `100 Continue`) is not over.
pub fn is_interim_head(data: &[u8]) -> bool {
    data.len() > 9 && data.starts_with(b"HTTP/1.") && data[9] == b'1'
}

/// Advances a `\r\n\r\n` matcher (`matched`: how many bytes of it the head so far ends
/// with) over `bytes`; true when the head ended in them.
/// A SIMD substring search does the bulk (this runs on every byte a client sends in a head);
/// only the few bytes around a read boundary are matched one by one.
pub fn end_of_head(matched: &mut u8, bytes: &[u8]) -> bool {
    const END: &[u8; 4] = b"\r\n\r\n";
    // A terminator split across reads: finish the partial match first.
    let mut i = 0;
    while *matched > 0 && i < bytes.len() {
        let b = bytes[i];
        *matched = if b == END[*matched as usize] {
            *matched + 1
        } else {
            u8::from(b == b'\r')
        };
        i += 1;
        if *matched == 4 {
            *matched = 0;
            return true;
        }
    }
    let rest = &bytes[i..];
    if memchr::memmem::find(rest, END).is_some() {
        *matched = 0;
        return true;
    }
    // How much of a terminator the read ends with (when `rest` is shorter than 3 bytes the
    // state carried in above still stands unless `rest` changes it).
    if !rest.is_empty() {
        *matched = [3usize, 2, 1]
            .into_iter()
            .find(|&n| rest.len() >= n && rest[rest.len() - n..] == END[..n])
            .map_or(0, |n| n as u8);
    }
    false
}
