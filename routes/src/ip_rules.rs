//! Which client addresses may use a listener or a route: `allow_ips` and `deny_ips`.

use std::net::IpAddr;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// Why a block was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("expected an address or ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32")]
    Syntax,
    #[error("prefix /{0} is longer than the address")]
    PrefixTooLong(u8),
    #[error("has bits set past its prefix; did you mean {0}?")]
    HostBits(IpNet),
}

impl std::str::FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(text: &str) -> Result<IpNet, IpNetError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| IpNetError::Syntax)?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => bits,
            Some(prefix) => prefix.parse::<u8>().map_err(|_| IpNetError::Syntax)?,
        };
        if prefix_len > bits {
            return Err(IpNetError::PrefixTooLong(prefix_len));
        }
        let masked = mask(address, prefix_len);
        if masked != address {
            return Err(IpNetError::HostBits(IpNet {
                address: masked,
                prefix_len,
            }));
        }
        Ok(IpNet {
            address,
            prefix_len,
        })
    }
}

fn mask(address: IpAddr, prefix_len: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((u32::from(v4) & keep).into())
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((u128::from(v6) & keep).into())
        }
    }
}

/// Client address rules: a client must be in some `allow` block (when there are any) and
/// in no `deny` block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpRules {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl IpRules {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_parse_and_host_bits_are_refused_with_the_block_meant() {
        let net: IpNet = "10.0.0.0/8".parse().expect("valid");
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert_eq!("127.0.0.1".parse::<IpNet>().expect("valid").prefix_len, 32);
        assert_eq!("::1".parse::<IpNet>().expect("valid").prefix_len, 128);
        assert_eq!(
            "2001:db8::/32".parse::<IpNet>().expect("valid").prefix_len,
            32
        );
        assert_eq!(
            "10.1.2.3/8".parse::<IpNet>().map_err(|e| e.to_string()),
            Err("has bits set past its prefix; did you mean 10.0.0.0/8?".into())
        );
        assert_eq!(
            "10.0.0.0/33".parse::<IpNet>(),
            Err(IpNetError::PrefixTooLong(33))
        );
        assert_eq!("10.0.0/8".parse::<IpNet>(), Err(IpNetError::Syntax));
        assert_eq!("0.0.0.0/0".parse::<IpNet>().expect("valid").prefix_len, 0);
    }
}
