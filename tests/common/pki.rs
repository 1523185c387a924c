//! A throw-away PKI made with the `openssl` CLI at test time, and client profile
//! text built from it. Shared by the VPN unit tests (`#[path]`) and `tests/vpn.rs`.
#![allow(dead_code)] // each user takes a different part

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Certificates and keys (PEM text) of a test PKI.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
    /// A client certificate signed by the CA that expired in 2020.
    pub expired_cert: String,
    pub expired_key: String,
    /// A key that belongs to no certificate.
    pub stray_key: String,
    /// A client certificate from another CA.
    pub foreign_cert: String,
    pub foreign_key: String,
    pub tls_crypt_key: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running the openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

fn request(dir: &Path, name: &str, cn: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let subj = format!("/CN={cn}");
    let mut args = vec!["req", "-new", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj];
    args.extend(EC);
    openssl(dir, &args);
}

fn sign(dir: &Path, name: &str, ca: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let (csr, crt, extfile) = (format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "60",
            "-extfile",
            &extfile,
        ],
    );
}

fn self_signed(dir: &Path, name: &str, cn: &str) {
    let (key, crt, subj) = (format!("{name}.key"), format!("{name}.crt"), format!("/CN={cn}"));
    let mut args = vec![
        "req", "-x509", "-nodes", "-days", "365", "-keyout", &key, "-out", &crt, "-subj", &subj,
    ];
    args.extend(EC);
    openssl(dir, &args);
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        self_signed(dir, "ca", "Raven Test CA");
        self_signed(dir, "foreign-ca", "Foreign CA");
        request(dir, "server", "raven-noc");
        sign(
            dir,
            "server",
            "ca",
            "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyAgreement\n",
        );
        request(dir, "client", "raven-appliance");
        sign(
            dir,
            "client",
            "ca",
            "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyAgreement\n",
        );
        request(dir, "foreign", "intruder");
        sign(dir, "foreign", "foreign-ca", "extendedKeyUsage=clientAuth\n");
        request(dir, "stray", "stray");
        // An expired certificate: `openssl ca` accepts explicit start and end dates.
        request(dir, "expired", "expired-appliance");
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "1000\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
             default_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.crt",
                "-keyfile",
                "ca.key",
                "-in",
                "expired.csr",
                "-out",
                "expired.crt",
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200201000000Z",
                "-notext",
            ],
        );
        let out = Command::new("openvpn")
            .current_dir(dir)
            .args(["--genkey", "secret", "tls-crypt.key"])
            .output()
            .expect("running openvpn --genkey");
        assert!(out.status.success(), "openvpn --genkey: {}", String::from_utf8_lossy(&out.stderr));
        Pki {
            dir: dir.to_path_buf(),
            ca_cert: read(dir, "ca.crt"),
            server_cert: read(dir, "server.crt"),
            server_key: read(dir, "server.key"),
            client_cert: read(dir, "client.crt"),
            client_key: read(dir, "client.key"),
            expired_cert: read(dir, "expired.crt"),
            expired_key: read(dir, "expired.key"),
            stray_key: read(dir, "stray.key"),
            foreign_cert: read(dir, "foreign.crt"),
            foreign_key: read(dir, "foreign.key"),
            tls_crypt_key: read(dir, "tls-crypt.key"),
        }
    }

    /// A client profile for `remote host port` with the given certificate and key.
    pub fn client_profile_with(
        &self,
        remote: &str,
        port: u16,
        cert: &str,
        key: &str,
        extra: &str,
    ) -> String {
        format!(
            "client\ndev tun\nproto udp\nremote {remote} {port}\nnobind\npersist-key\nremote-cert-tls server\n\
             verify-x509-name raven-noc name\nconnect-retry 1 2\nresolv-retry 0\nverb 3\n{extra}\
             <ca>\n{}</ca>\n<cert>\n{cert}</cert>\n<key>\n{key}</key>\n<tls-crypt>\n{}</tls-crypt>\n",
            self.ca_cert, self.tls_crypt_key
        )
    }

    pub fn client_profile(&self, remote: &str, port: u16) -> String {
        self.client_profile_with(remote, port, &self.client_cert, &self.client_key, "")
    }
}
