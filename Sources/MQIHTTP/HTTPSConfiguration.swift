import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import MQICore

/// `http.tls: { cert_file, key_file }`: the endpoint speaks HTTPS only, through Hummingbird's
/// TLS channel (swift-nio-ssl). A file that is missing, unreadable, not PEM, or a key that does
/// not belong to the certificate is an error that names the config key and the file, at start.
enum HTTPSConfiguration {
    /// The server's TLS settings from the files: TLS 1.2 or later, no client certificates.
    static func load(_ files: TLSFiles) throws -> TLSConfiguration {
        let chain = try certificates(files.certFile)
        let key = try privateKey(files.keyFile)
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        return configuration
    }

    /// Checks the files as the server will use them (at start, before anything listens).
    static func validate(_ files: TLSFiles) throws {
        _ = try channel(files, responder: { _, _, _ in })
    }

    /// The server builder for `Application`: HTTP/1.1 inside TLS, the files loaded when the
    /// server starts.
    static func serverBuilder(_ files: TLSFiles) -> HTTPServerBuilder {
        HTTPServerBuilder { responder in try channel(files, responder: responder) }
    }

    /// Building the TLS context is where BoringSSL checks that the key belongs to the
    /// certificate: a mismatch fails here, at start, not at each handshake.
    static func channel(_ files: TLSFiles, responder: @escaping HTTPChannelHandler.Responder) throws -> any ServerChildChannel {
        let configuration = try load(files)
        do {
            return try TLSChannel(HTTP1Channel(responder: responder), tlsConfiguration: configuration)
        } catch {
            throw HTTPServerError("http.tls.key_file \(files.keyFile) does not belong to the certificate in http.tls.cert_file \(files.certFile) (\(error)): give the key the certificate was made for")
        }
    }

    static func certificates(_ path: String) throws -> [NIOSSLCertificate] {
        try checkReadable(path, key: "http.tls.cert_file")
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw HTTPServerError("http.tls.cert_file \(path) is not a PEM certificate (\(error)): give the server's certificate, then any intermediates, each as '-----BEGIN CERTIFICATE-----' blocks")
        }
        guard !chain.isEmpty else {
            throw HTTPServerError("http.tls.cert_file \(path) holds no certificate: give the server's certificate in PEM ('-----BEGIN CERTIFICATE-----')")
        }
        return chain
    }

    static func privateKey(_ path: String) throws -> NIOSSLPrivateKey {
        try checkReadable(path, key: "http.tls.key_file")
        do {
            return try NIOSSLPrivateKey(file: path, format: .pem)
        } catch {
            throw HTTPServerError("http.tls.key_file \(path) is not an unencrypted PEM private key (\(error)): give the certificate's key without a passphrase ('-----BEGIN PRIVATE KEY-----'), readable only by the daemon's user")
        }
    }

    /// Names the key and the file, and whether it is missing or only unreadable (permissions).
    static func checkReadable(_ path: String, key: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw HTTPServerError("\(key) \(path) does not exist: give the path of the PEM file, or remove http.tls to serve plain HTTP")
        }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw HTTPServerError("\(key) \(path) is not readable by this user: make it readable by the daemon's user (keep a key file private to it, mode 600)")
        }
    }
}
