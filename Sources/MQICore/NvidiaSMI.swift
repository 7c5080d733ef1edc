import Foundation
/// One GPU as `nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu
/// --format=csv,noheader,nounits` reports it. Fields the driver reports as `[N/A]` or
/// `[Not Supported]` are nil.
public struct GPUSample: Sendable, Equatable {
    public var index: Int
    public var uuid: String?
    public var name: String?
    public var utilizationPercent: Double?
    public var memoryUsedMB: Double?
    public var memoryTotalMB: Double?
    public var temperatureC: Double?

    public init(index: Int, uuid: String? = nil, name: String? = nil, utilizationPercent: Double? = nil,
                memoryUsedMB: Double? = nil, memoryTotalMB: Double? = nil, temperatureC: Double? = nil) {
        self.index = index
        self.uuid = uuid
        self.name = name
        self.utilizationPercent = utilizationPercent
        self.memoryUsedMB = memoryUsedMB
        self.memoryTotalMB = memoryTotalMB
        self.temperatureC = temperatureC
    }
}

/// Parses nvidia-smi's CSV query output. Never throws: lines it cannot read become warnings.
public enum NvidiaSMI {
    public struct Parsed: Sendable, Equatable {
        public var gpus: [GPUSample]
        public var warnings: [String]
    }

    public static func parse(_ output: String) -> Parsed {
        var gpus: [GPUSample] = []
        var warnings: [String] = []
        for (number, rawLine) in output.split(whereSeparator: \.isNewline).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            // A header (when --format lacks noheader) or an error message from the driver.
            if fields.first?.lowercased() == "index" { continue }
            guard fields.count >= 7, let index = Int(fields[0]), index >= 0 else {
                warnings.append("nvidia-smi line \(number + 1) not understood: \(String(line.prefix(200)))")
                continue
            }
            if gpus.contains(where: { $0.index == index }) {
                warnings.append("nvidia-smi line \(number + 1): GPU \(index) listed twice; keeping the first")
                continue
            }
            gpus.append(GPUSample(
                index: index, uuid: text(fields[1]), name: text(fields[2]),
                utilizationPercent: value(fields[3]), memoryUsedMB: value(fields[4]),
                memoryTotalMB: value(fields[5]), temperatureC: value(fields[6])))
        }
        return Parsed(gpus: gpus, warnings: warnings)
    }

    static func isMissing(_ field: String) -> Bool {
        field.isEmpty || field.hasPrefix("[") || field.uppercased() == "N/A"
    }

    static func text(_ field: String) -> String? {
        isMissing(field) ? nil : field
    }

    static func value(_ field: String) -> Double? {
        guard !isMissing(field) else { return nil }
        // Tolerate units when `nounits` was left out ("45 %", "1024 MiB").
        let number = field.prefix { $0.isNumber || $0 == "." || $0 == "-" }
        guard let parsed = Double(number), parsed.isFinite, parsed >= 0 else { return nil }
        return parsed
    }
}
