import Foundation

/// A command line with `{placeholder}` slots, parsed once when the config loads.
///
/// A placeholder is `{identifier}` with an identifier of letters, digits and `_`. Anything else
/// is literal text: `${HOME}` (shell expansion), `{ a; }`, awk's `{print $1}`, and `{{` / `}}`
/// for a literal brace. Every substituted value is shell-quoted, so a case named
/// `x'; touch /tmp/pwned; '` reaches the command as one harmless argument.
public struct CommandTemplate: Sendable, Equatable, CustomStringConvertible {
    public enum Piece: Sendable, Equatable {
        case literal(String)
        case placeholder(String)
    }

    public static let knownPlaceholders: Set<String> = [
        "case_id", "gpu_id", "gpu_ids", "gpu_count", "upload_dir", "download_dir", "case_dir", "result_dir",
        "results_dir", "delivery", "patient_id", "beam_numbers", "beam_number"]

    public let source: String
    public let pieces: [Piece]

    public var placeholders: [String] {
        pieces.compactMap { if case .placeholder(let name) = $0 { name } else { nil } }
    }

    public var description: String { source }

    /// Parses `source`; throws `TemplateError` naming the first unknown placeholder.
    public init(_ source: String, known: Set<String> = CommandTemplate.knownPlaceholders) throws(TemplateError) {
        self.source = source
        var pieces: [Piece] = []
        var literal = ""
        let chars = Array(source)
        var index = 0
        while index < chars.count {
            let char = chars[index]
            if char == "{" || char == "}", index + 1 < chars.count, chars[index + 1] == char {
                literal.append(char)
                index += 2
                continue
            }
            if char == "{", index == 0 || chars[index - 1] != "$",
               let close = chars[(index + 1)...].firstIndex(of: "}") {
                let name = String(chars[(index + 1)..<close])
                if !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) {
                    guard known.contains(name) else {
                        throw TemplateError(placeholder: name, known: known)
                    }
                    if !literal.isEmpty { pieces.append(.literal(literal)); literal = "" }
                    pieces.append(.placeholder(name))
                    index = close + 1
                    continue
                }
            }
            literal.append(char)
            index += 1
        }
        if !literal.isEmpty { pieces.append(.literal(literal)) }
        self.pieces = pieces
    }

    /// The command with every placeholder replaced by its shell-quoted value.
    /// A placeholder missing from `values` is rendered as an empty quoted string.
    /// With `quoted: false` values go in as they are (for input files, not shell commands).
    public func render(_ values: [String: String], quoted: Bool = true) -> String {
        var out = ""
        for piece in pieces {
            switch piece {
            case .literal(let text): out += text
            case .placeholder(let name): out += quoted ? ShellQuote.quote(values[name] ?? "") : (values[name] ?? "")
            }
        }
        return out
    }
}

public struct TemplateError: Error, Sendable, Equatable, CustomStringConvertible {
    public var placeholder: String
    public var known: Set<String>

    public var description: String {
        "unknown placeholder {\(placeholder)}; known placeholders: "
            + known.sorted().map { "{\($0)}" }.joined(separator: ", ")
    }
}

/// POSIX shell quoting.
public enum ShellQuote {
    /// `value` as one single-quoted shell word: `it's` → `'it'\''s'`.
    public static func quote(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}
