import Foundation
import Hummingbird
import Logging
import MQICore
import MQIStore

/// What the JSON API and the dashboard need from the daemon.
public struct APIContext: Sendable {
    public var store: Store
    /// Retry and cancel go through the Conductor, like the CLI.
    public var conductor: Conductor
    public var config: Config
    public var logger: Logger

    public init(store: Store, conductor: Conductor, config: Config, logger: Logger) {
        self.store = store
        self.conductor = conductor
        self.config = config
        self.logger = logger
    }
}

/// The JSON API (`/api/...`) and the dashboard pages.
public enum APIRoutes {
    public static func register(on router: Router<BasicRequestContext>, _ context: APIContext) {
        // Filled in by the API/dashboard work (issue 6).
    }
}
