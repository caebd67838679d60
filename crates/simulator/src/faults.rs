//! Faults the simulator can inject, and their text form for `--faults`.

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 401.
    Unauthorized,
    /// A general error object with code 1 (unknown error).
    Code1,
    /// HTTP 500.
    Http500,
    /// HTTP 503 with `Retry-After`.
    Throttled(u64),
    /// The request hangs past any sensible timeout.
    Timeout,
    /// A body that is not JSON.
    Malformed,
}

impl Fault {
    /// How the simulator's request log names it.
    pub fn label(self) -> &'static str {
        match self {
            Fault::Unauthorized => "fault:401",
            Fault::Code1 => "fault:code1",
            Fault::Http500 => "fault:5xx",
            Fault::Throttled(_) => "fault:503",
            Fault::Timeout => "fault:timeout",
            Fault::Malformed => "fault:malformed",
        }
    }

    fn parse(name: &str) -> Option<Fault> {
        Some(match name {
            "401" | "auth" => Fault::Unauthorized,
            "code1" | "1" => Fault::Code1,
            "5xx" | "500" => Fault::Http500,
            "503" | "throttle" => Fault::Throttled(1),
            "timeout" => Fault::Timeout,
            "malformed" => Fault::Malformed,
            _ => return None,
        })
    }
}

/// A fault in what an answer says about one cart, as a partner has them on a bad day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFault {
    /// The creation date is `0001-01-01T00:00:00` (an unset .NET `DateTime`) or `1900-01-01`.
    ZeroDate,
    /// An ordered cart comes without its `orderID`.
    NoOrderId,
    /// The cart is listed twice, the first entry stale (the status before the current one).
    StaleDuplicate,
}

impl DataFault {
    fn parse(name: &str) -> Option<DataFault> {
        Some(match name {
            "zero-date" => DataFault::ZeroDate,
            "no-order-id" => DataFault::NoOrderId,
            "stale-duplicate" => DataFault::StaleDuplicate,
            _ => return None,
        })
    }
}

/// Which faults to inject, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    /// Each fault with its probability per request, tried in order.
    pub random: Vec<(Fault, f64)>,
    /// Each fault in an answer's data with its probability per cart in the answer.
    pub data: Vec<(DataFault, f64)>,
    /// A fault every request gets, overriding `random`.
    pub always: Option<Fault>,
    /// The most cart ids the server accepts per request; more get code 102.
    pub max_ids: usize,
    /// Requests containing this cart id get code 501.
    pub poison_cart: Option<String>,
    /// Requests answered without this cart id in the response.
    pub omit_cart: Option<String>,
    /// A cart id added to every answer although nobody asked for it.
    pub extra_cart: Option<String>,
}

impl Default for FaultSpec {
    fn default() -> FaultSpec {
        FaultSpec {
            random: Vec::new(),
            data: Vec::new(),
            always: None,
            max_ids: 10,
            poison_cart: None,
            omit_cart: None,
            extra_cart: None,
        }
    }
}

impl FaultSpec {
    /// Reads `401:0.05,code1:0.05,5xx:0.05,timeout:0.01,malformed:0.05` (request faults: 401,
    /// code1, 5xx, 503, timeout, malformed; each with its probability per request) and
    /// `zero-date:0.2,no-order-id:0.5,stale-duplicate:0.3` (data faults, with their
    /// probability per cart in an answer). `none` or an empty text means no faults.
    ///
    /// Fails with a message naming the part that is not understood.
    pub fn parse(text: &str) -> Result<FaultSpec, String> {
        let mut spec = FaultSpec::default();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty() && *part != "none") {
            let (name, probability) =
                part.split_once(':').ok_or_else(|| format!("fault {part:?} needs a probability, like 5xx:0.1"))?;
            let name = name.trim();
            let probability: f64 = probability
                .trim()
                .parse()
                .ok()
                .filter(|p: &f64| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("probability of {name} must be between 0 and 1, got {probability:?}"))?;
            match (Fault::parse(name), DataFault::parse(name)) {
                (Some(fault), _) => spec.random.push((fault, probability)),
                (None, Some(fault)) => spec.data.push((fault, probability)),
                (None, None) => {
                    return Err(format!(
                        "unknown fault {name:?}; known: 401, code1, 5xx, 503, timeout, malformed, zero-date, \
                         no-order-id, stale-duplicate"
                    ));
                }
            }
        }
        Ok(spec)
    }

    /// Whether `fault` hits a cart, from a uniform sample in `[0, 1)`.
    pub fn data_fault(&self, fault: DataFault, sample: f64) -> bool {
        self.data.iter().any(|(kind, probability)| *kind == fault && sample < *probability)
    }

    /// Chooses the fault for a request from a uniform sample in `[0, 1)`.
    pub fn choose(&self, sample: f64) -> Option<Fault> {
        if self.always.is_some() {
            return self.always;
        }
        let mut threshold = 0.0;
        for (fault, probability) in &self.random {
            threshold += probability;
            if sample < threshold {
                return Some(*fault);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_form() {
        let spec = FaultSpec::parse("401:0.1, code1:0.2,5xx:0.05,timeout:0.01,malformed:0.05").unwrap();
        assert_eq!(spec.random.len(), 5);
        assert_eq!(spec.choose(0.05), Some(Fault::Unauthorized));
        assert_eq!(spec.choose(0.25), Some(Fault::Code1));
        assert_eq!(spec.choose(0.9), None);
        assert!(FaultSpec::parse("none").unwrap().random.is_empty());
        assert!(FaultSpec::parse("bogus:0.1").unwrap_err().contains("unknown fault"));
        assert!(FaultSpec::parse("5xx:2").unwrap_err().contains("between 0 and 1"));
        assert!(FaultSpec::parse("5xx").is_err());
        let data = FaultSpec::parse("zero-date:1,stale-duplicate:0.5").unwrap();
        assert_eq!(data.data, [(DataFault::ZeroDate, 1.0), (DataFault::StaleDuplicate, 0.5)]);
        assert!(data.random.is_empty());
        assert!(data.data_fault(DataFault::ZeroDate, 0.99));
        assert!(!data.data_fault(DataFault::StaleDuplicate, 0.6));
        assert!(!data.data_fault(DataFault::NoOrderId, 0.0));
    }
}
