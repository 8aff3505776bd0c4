//! Which device a model runs on: `cpu` (default), `cuda[:N]` (only in builds with the
//! `cuda` feature) or `auto` (CUDA when this build and machine have it, else CPU).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::ModelError;

/// A device as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// The NVIDIA GPU with this ordinal.
    Cuda(usize),
    /// CUDA device 0 when available, otherwise the CPU.
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| format!("bad CUDA ordinal in {s:?}; expected cuda:N")),
                None => Err(format!(
                    "unknown device {s:?}; expected cpu, cuda, cuda:N or auto"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

/// True when this binary was built with the `cuda` feature.
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// Opens the device named by `spec`. `auto` says (in the log) when it falls back to CPU.
pub fn select_device(spec: DeviceSpec) -> Result<Device, ModelError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => open_cuda(n),
        DeviceSpec::Auto => {
            if CUDA_BUILD && candle_core::utils::cuda_is_available() {
                match open_cuda(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => {
                        tracing::warn!("device auto: CUDA present but unusable ({e}); using CPU")
                    }
                }
            } else if !CUDA_BUILD {
                tracing::info!("device auto: this build has no CUDA support; using CPU");
            } else {
                tracing::info!("device auto: no CUDA device found; using CPU");
            }
            Ok(Device::Cpu)
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device, ModelError> {
    Device::new_cuda(n).map_err(|e| ModelError::Device(format!("cannot open cuda:{n}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device, ModelError> {
    Err(ModelError::Device(format!(
        "cuda:{n} requested but this binary was built without CUDA support; rebuild with `cargo build --release --features cuda`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("CUDA".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn auto_and_cpu_always_give_a_device() {
        assert!(select_device(DeviceSpec::Cpu).is_ok());
        assert!(select_device(DeviceSpec::Auto).is_ok());
        if !CUDA_BUILD {
            let err = select_device(DeviceSpec::Cuda(0)).unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
