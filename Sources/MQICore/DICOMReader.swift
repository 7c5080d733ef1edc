/// A DICOM attribute tag `(gggg,eeee)`.
public struct DICOMTag: Hashable, Sendable, CustomStringConvertible {
    public var group: UInt16
    public var element: UInt16

    public init(_ group: UInt16, _ element: UInt16) {
        self.group = group
        self.element = element
    }

    public var description: String {
        func hex(_ value: UInt16) -> String {
            let digits = String(value, radix: 16, uppercase: true)
            return String(repeating: "0", count: 4 - digits.count) + digits
        }
        return "(\(hex(group)),\(hex(element)))"
    }

    static let item = DICOMTag(0xFFFE, 0xE000)
    static let itemDelimiter = DICOMTag(0xFFFE, 0xE00D)
    static let sequenceDelimiter = DICOMTag(0xFFFE, 0xE0DD)
    static let transferSyntax = DICOMTag(0x0002, 0x0010)
    static let pixelData = DICOMTag(0x7FE0, 0x0010)
}

/// Why bytes could not be read as DICOM: what, and at which byte offset of the file.
public struct DICOMError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public var name: String
        /// No `DICM` after the 128-byte preamble.
        public static let notDICOM = Code(name: "not DICOM")
        /// The data end inside an element, item or sequence.
        public static let truncated = Code(name: "truncated")
        /// Lengths or delimiters that contradict each other.
        public static let malformed = Code(name: "malformed")
        /// A valid encoding this reader does not read (deflate, big endian).
        public static let unsupported = Code(name: "unsupported")
        /// Readable DICOM without an attribute the caller needs.
        public static let missing = Code(name: "missing attribute")
        public var description: String { name }
    }

    public var code: Code
    /// Byte offset in the file, when the problem is at one place.
    public var offset: Int?
    public var message: String

    public init(_ code: Code, at offset: Int? = nil, _ message: String) {
        self.code = code
        self.offset = offset
        self.message = message
    }

    public var description: String {
        "\(code): \(message)\(offset.map { " (at byte \($0))" } ?? "")"
    }
}

/// A parsed DICOM data set: the attributes of one level (the file's top level, or one
/// sequence item). Large values (pixel data) are not kept, only their length.
public struct DICOMDataSet: Sendable, Equatable {
    public enum Value: Sendable, Equatable {
        case bytes([UInt8])
        case sequence([DICOMDataSet])
        /// A value longer than `DICOMReader.keptValueLimit`, or encapsulated fragments: skipped.
        case skipped(length: Int)
    }

    public var values: [DICOMTag: Value] = [:]

    public init() {}

    public subscript(tag: DICOMTag) -> Value? { values[tag] }

    /// A text value (CS, LO, SH, IS, UI, ...) with its padding (trailing spaces and NULs, leading
    /// spaces) removed; nil when absent or not text. UTF-8, or Latin-1 when it is not valid UTF-8.
    public func string(_ tag: DICOMTag) -> String? {
        guard case .bytes(let bytes)? = values[tag] else { return nil }
        var end = bytes.count
        while end > 0, bytes[end - 1] == 0 || bytes[end - 1] == 0x20 { end -= 1 }
        var start = 0
        while start < end, bytes[start] == 0x20 { start += 1 }
        let slice = bytes[start..<end]
        if let text = String(validating: slice, as: UTF8.self) { return text }
        return String(slice.map { Character(Unicode.Scalar($0)) })
    }

    /// The items of a sequence; nil when absent or not a sequence.
    public func sequence(_ tag: DICOMTag) -> [DICOMDataSet]? {
        guard case .sequence(let items)? = values[tag] else { return nil }
        return items
    }
}

/// Reads DICOM Part 10 files (128-byte preamble, `DICM`, the file meta group) in explicit or
/// implicit VR little endian, with sequences and items of defined and undefined length. Bounded:
/// every length is checked against the bytes left, nesting is limited, and every step consumes
/// bytes, so malformed or truncated input is a `DICOMError`, never a crash or a hang.
public struct DICOMReader {
    /// Values longer than this are skipped (pixel data, dose grids); an RT plan's text is far smaller.
    public static let keptValueLimit = 1 << 16
    /// Sequence nesting deeper than this is refused (real plans nest 3–4 levels).
    public static let maxDepth = 24

    static let implicitVRLittleEndian = "1.2.840.10008.1.2"
    static let explicitVRBigEndian = "1.2.840.10008.1.2.2"
    static let deflatedExplicitVRLittleEndian = "1.2.840.10008.1.2.1.99"
    /// VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
    static let longVRs: Set<String> = ["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]
    /// Sequence attributes read as sequences in implicit VR even with a defined length (an
    /// undefined length is read as a sequence whatever the tag).
    public static let knownSequences: Set<DICOMTag> = [
        DICOMTag(0x300A, 0x03A2), DICOMTag(0x300A, 0x00B0), DICOMTag(0x300A, 0x0070),
        DICOMTag(0x300C, 0x0002), DICOMTag(0x300C, 0x0060),
    ]

    let bytes: [UInt8]
    var offset = 0
    var explicit = true

    /// Parses a whole Part 10 file: the meta group, then the data set in its transfer syntax.
    /// The returned data set holds the meta group's attributes too.
    public static func read(_ data: [UInt8]) throws(DICOMError) -> DICOMDataSet {
        var reader = DICOMReader(bytes: data)
        return try reader.readFile()
    }

    mutating func readFile() throws(DICOMError) -> DICOMDataSet {
        guard bytes.count >= 132 else {
            throw DICOMError(.notDICOM, "\(bytes.count) bytes, too short for a DICOM file (128-byte preamble and 'DICM')")
        }
        guard bytes[128..<132].elementsEqual("DICM".utf8) else {
            throw DICOMError(.notDICOM, at: 128, "no 'DICM' after the 128-byte preamble: not a DICOM Part 10 file")
        }
        offset = 132
        var dataSet = DICOMDataSet()
        // The file meta group is always explicit VR little endian.
        while offset + 4 <= bytes.count, try peekTag().group == 0x0002 {
            let (tag, value) = try readElement(depth: 0)
            dataSet.values[tag] = value
        }
        let syntax = dataSet.string(DICOMTag.transferSyntax) ?? ""
        switch syntax {
        case Self.implicitVRLittleEndian: explicit = false
        case Self.explicitVRBigEndian: throw DICOMError(.unsupported, "explicit VR big endian (retired) is not read")
        case Self.deflatedExplicitVRLittleEndian: throw DICOMError(.unsupported, "deflated explicit VR little endian is not read")
        case "": throw DICOMError(.missing, "no transfer syntax (0002,0010) in the file meta group")
        default: explicit = true  // explicit VR LE, and every compressed syntax encodes the data set so
        }
        let body = try readDataSet(until: bytes.count, depth: 0, delimited: false)
        dataSet.values.merge(body.values) { _, new in new }
        return dataSet
    }

    func peekTag() throws(DICOMError) -> DICOMTag {
        guard offset + 4 <= bytes.count else { throw DICOMError(.truncated, at: offset, "the file ends inside an element tag") }
        return DICOMTag(u16(offset), u16(offset + 2))
    }

    func u16(_ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
    func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }

    mutating func take(_ count: Int, _ what: @autoclosure () -> String) throws(DICOMError) -> Int {
        guard count >= 0, count <= bytes.count - offset else {
            throw DICOMError(.truncated, at: offset, "\(what()) needs \(count) bytes, only \(bytes.count - offset) left")
        }
        defer { offset += count }
        return offset
    }

    /// Elements up to `end` (a defined length), or up to an item delimiter when `delimited`.
    mutating func readDataSet(until end: Int, depth: Int, delimited: Bool) throws(DICOMError) -> DICOMDataSet {
        var dataSet = DICOMDataSet()
        while offset < end {
            let tag = try peekTag()
            if tag == DICOMTag.itemDelimiter {
                guard delimited else { throw DICOMError(.malformed, at: offset, "item delimiter outside an item of undefined length") }
                let at = try take(8, "item delimiter")
                guard u32(at + 4) == 0 else { throw DICOMError(.malformed, at: at, "item delimiter with a non-zero length") }
                return dataSet
            }
            if tag.group == 0xFFFE {
                throw DICOMError(.malformed, at: offset, "unexpected \(tag) among the attributes of a data set")
            }
            let (readTag, value) = try readElement(depth: depth)
            dataSet.values[readTag] = value
        }
        if delimited {
            throw DICOMError(.truncated, at: offset, "the file ends inside an item of undefined length (no item delimiter)")
        }
        guard offset == end else {
            throw DICOMError(.malformed, at: offset, "an element runs \(offset - end) bytes past the end of its item")
        }
        return dataSet
    }

    mutating func readElement(depth: Int) throws(DICOMError) -> (DICOMTag, DICOMDataSet.Value) {
        let start = offset
        let tag = try peekTag()
        let explicitHere = explicit || tag.group == 0x0002
        var vr: String?
        let length: UInt32
        if explicitHere {
            let at = try take(8, "element header \(tag)")
            let vrBytes = bytes[(at + 4)..<(at + 6)]
            guard vrBytes.allSatisfy({ $0 >= 0x41 && $0 <= 0x5A }) else {
                throw DICOMError(.malformed, at: at + 4, "element \(tag) has no valid VR (is the transfer syntax right?)")
            }
            let name = String(decoding: vrBytes, as: UTF8.self)
            vr = name
            if Self.longVRs.contains(name) {
                let long = try take(4, "element header \(tag)")
                length = u32(long)
            } else {
                length = UInt32(u16(at + 6))
            }
        } else {
            let at = try take(8, "element header \(tag)")
            length = u32(at + 4)
        }
        let undefined = length == 0xFFFF_FFFF
        if tag == DICOMTag.pixelData || vr == "OB" || vr == "OW" {
            if undefined {
                return (tag, .skipped(length: try skipFragments(of: tag, start: start)))
            }
        }
        let isSequence = vr == "SQ" || (vr == nil && (undefined || Self.knownSequences.contains(tag))) || (vr == "UN" && undefined)
        if isSequence {
            guard depth < Self.maxDepth else {
                throw DICOMError(.malformed, at: start, "sequences nested deeper than \(Self.maxDepth) levels")
            }
            // An undefined-length UN is an implicit VR sequence (PS3.5 6.2.2).
            let saved = explicit
            if vr == "UN" { explicit = false }
            defer { explicit = saved }
            return (tag, .sequence(try readItems(of: tag, length: length, depth: depth + 1)))
        }
        guard !undefined else {
            throw DICOMError(.malformed, at: start, "element \(tag)\(vr.map { " (\($0))" } ?? "") has an undefined length but is not a sequence")
        }
        let count = Int(length)
        let at = try take(count, "the value of \(tag)")
        if count > Self.keptValueLimit { return (tag, .skipped(length: count)) }
        return (tag, .bytes(Array(bytes[at..<(at + count)])))
    }

    /// Items of a sequence: up to its defined length, or up to a sequence delimiter.
    mutating func readItems(of tag: DICOMTag, length: UInt32, depth: Int) throws(DICOMError) -> [DICOMDataSet] {
        let undefined = length == 0xFFFF_FFFF
        let end: Int
        if undefined {
            end = bytes.count
        } else {
            guard Int(length) <= bytes.count - offset else {
                throw DICOMError(.truncated, at: offset, "sequence \(tag) claims \(length) bytes, only \(bytes.count - offset) left")
            }
            end = offset + Int(length)
        }
        var items: [DICOMDataSet] = []
        while offset < end {
            let itemStart = offset
            let at = try take(8, "an item header of sequence \(tag)")
            let itemTag = DICOMTag(u16(at), u16(at + 2))
            let itemLength = u32(at + 4)
            if itemTag == DICOMTag.sequenceDelimiter {
                guard undefined else { throw DICOMError(.malformed, at: itemStart, "sequence delimiter in sequence \(tag) of defined length") }
                return items
            }
            guard itemTag == DICOMTag.item else {
                throw DICOMError(.malformed, at: itemStart, "expected an item (FFFE,E000) in sequence \(tag), found \(itemTag)")
            }
            if itemLength == 0xFFFF_FFFF {
                items.append(try readDataSet(until: end, depth: depth, delimited: true))
            } else {
                guard Int(itemLength) <= end - offset else {
                    throw DICOMError(.truncated, at: itemStart, "item of sequence \(tag) claims \(itemLength) bytes, only \(end - offset) left")
                }
                items.append(try readDataSet(until: offset + Int(itemLength), depth: depth, delimited: false))
            }
        }
        if undefined {
            throw DICOMError(.truncated, at: offset, "the file ends inside sequence \(tag) of undefined length (no sequence delimiter)")
        }
        guard offset == end else { throw DICOMError(.malformed, at: offset, "an item runs past the end of sequence \(tag)") }
        return items
    }

    /// Encapsulated pixel data: fragments (items of defined length) up to a sequence delimiter.
    mutating func skipFragments(of tag: DICOMTag, start: Int) throws(DICOMError) -> Int {
        while true {
            let at = try take(8, "a fragment header of \(tag)")
            let fragmentTag = DICOMTag(u16(at), u16(at + 2))
            let length = u32(at + 4)
            if fragmentTag == DICOMTag.sequenceDelimiter { return offset - start }
            guard fragmentTag == DICOMTag.item, length != 0xFFFF_FFFF else {
                throw DICOMError(.malformed, at: at, "expected a fragment item in \(tag), found \(fragmentTag)")
            }
            _ = try take(Int(length), "a fragment of \(tag)")
        }
    }
}
