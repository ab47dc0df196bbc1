//! Redis's own memory, read as an operator would (`INFO memory`,
//! `used_memory`), over a plain TCP connection: an inline command and one
//! bulk-string reply need no client library.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `used_memory` of the Redis at `addr` (`HOST:PORT`), in bytes.
pub(crate) async fn used_memory(addr: &str) -> io::Result<u64> {
    let info = info_memory(addr).await?;
    field(&info, "used_memory")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no used_memory in INFO memory"))
}

async fn info_memory(addr: &str) -> io::Result<String> {
    let mut stream = BufReader::new(TcpStream::connect(addr).await?);
    stream.get_mut().write_all(b"INFO memory\r\n").await?;
    let mut header = String::new();
    stream.read_line(&mut header).await?;
    let length: usize = header
        .trim_end()
        .strip_prefix('$')
        .and_then(|length| length.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("Redis answered {:?} to INFO memory", header.trim_end()),
            )
        })?;
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    String::from_utf8(body).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// The number after `name:` on a line of an `INFO` reply.
fn field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (key, value) = line.trim_end().split_once(':')?;
        if key == name {
            value.parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_field() {
        let info = "# Memory\r\nused_memory:1043520\r\nused_memory_human:1019.06K\r\nused_memory_rss:8192\r\n";
        assert_eq!(field(info, "used_memory"), Some(1_043_520));
        assert_eq!(field(info, "used_memory_rss"), Some(8_192));
        assert_eq!(field(info, "used_memory_peak"), None);
    }
}
