import Hummingbird
import NIOCore

/// The request context of every route: Hummingbird's basic one plus the client's address, which
/// the audit of mutating requests records (`retry by alice from 10.1.2.3`).
public struct MQIRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    /// The client's address as an operator reads it (`10.1.2.3`), or "an unknown address".
    var clientAddress: String {
        remoteAddress?.ipAddress ?? "an unknown address"
    }
}
