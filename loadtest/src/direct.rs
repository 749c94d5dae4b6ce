//! Direct mode (the generator's floor): placeholder, see below.

use std::net::SocketAddr;

use callbridge::openai::mock::MockConfig;

/// The in-process facade.
pub struct Facade {
    /// Where callers connect.
    pub addr: SocketAddr,
}

impl Facade {
    /// Starts the facade.
    pub async fn start(_mock: MockConfig) -> anyhow::Result<Facade> {
        anyhow::bail!("--direct is not implemented yet")
    }
}
