//! Node identity on the data plane: a self-signed certificate made once and kept in the data
//! directory, named by the blake3 fingerprint of its DER encoding; and the verifier that
//! pins a peer's certificate to an expected fingerprint.

use std::path::Path;
use std::sync::Arc;

use lamina_protocol::CertFingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::DataPlaneError;

const CERT_FILE: &str = "dataplane-cert.der";
const KEY_FILE: &str = "dataplane-key.der";

/// A node's data-plane certificate and private key.
#[derive(Clone)]
pub struct Identity {
    cert: Vec<u8>,
    key: Vec<u8>,
    fingerprint: CertFingerprint,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh self-signed identity (not stored).
    pub fn generate() -> Result<Self, DataPlaneError> {
        let key = rcgen::KeyPair::generate().map_err(|e| DataPlaneError::Cert(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec![super::SERVER_NAME.to_owned()])
            .map_err(|e| DataPlaneError::Cert(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| DataPlaneError::Cert(e.to_string()))?;
        Ok(Self::from_der(cert.der().to_vec(), key.serialize_der()))
    }

    /// An identity from a DER certificate and a PKCS#8 DER key.
    pub fn from_der(cert: Vec<u8>, key: Vec<u8>) -> Self {
        let fingerprint = CertFingerprint::of_der(&cert);
        Self {
            cert,
            key,
            fingerprint,
        }
    }

    /// Loads the identity kept in `dir`, creating (and storing) one on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, DataPlaneError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path)?;
            let key = std::fs::read(&key_path)?;
            let id = Self::from_der(cert, key);
            // Refuse a mismatched or corrupt pair now, with a clear message, not at first dial.
            super::server_config(&id).map_err(|e| {
                DataPlaneError::Cert(format!(
                    "the data-plane identity in {} is unusable ({e}); delete both {CERT_FILE} and {KEY_FILE} to make a new one",
                    dir.display()
                ))
            })?;
            return Ok(id);
        }
        std::fs::create_dir_all(dir)?;
        let id = Self::generate()?;
        write_private(&key_path, &id.key)?;
        std::fs::write(&cert_path, &id.cert)?;
        Ok(id)
    }

    /// The blake3 fingerprint of the certificate (what dialers pin).
    pub fn fingerprint(&self) -> CertFingerprint {
        self.fingerprint
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert.clone())
    }

    /// The private key, PKCS#8 DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Accepts exactly the certificate whose blake3 fingerprint is the pinned one (and checks
/// the handshake signatures against it, so the peer must hold its key).
#[derive(Debug)]
pub struct PinnedVerifier {
    pin: CertFingerprint,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    /// A verifier pinning `pin`.
    pub fn new(pin: CertFingerprint, provider: Arc<CryptoProvider>) -> Self {
        Self { pin, provider }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = CertFingerprint::of_der(end_entity.as_ref());
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(expected = %self.pin, got = %got, "peer certificate fingerprint mismatch");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
