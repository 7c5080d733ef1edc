import Foundation
import Hummingbird
import NIOCore

/// A case's results as one ZIP archive, written while it is sent: each file is read in 256 KiB
/// chunks straight into the response (stored, not compressed: dose grids are sent on the
/// clinic's LAN, and storing keeps the server's memory flat whatever their size). Entries use
/// data descriptors, so a file's CRC-32 is computed as it goes; no size is known before the end.
/// The archive is plain ZIP (no ZIP64): a result over 4 GiB is refused before anything is sent.
enum ResultsZip {
    struct Entry: Sendable {
        /// The path inside the archive (`<root>/sub/dose.dcm`).
        var name: String
        /// The file on disk.
        var path: String
        var size: UInt64
        var modified: Date
    }

    static let chunkSize = 256 * 1024
    static let limit: UInt64 = 0xFFFF_FFFF

    /// The regular files under `directory` (symbolic links are not followed), sorted, under
    /// `root/` in the archive; throws when they do not fit a plain ZIP.
    static func entries(of directory: String, root: String) throws -> [Entry] {
        guard let enumerator = FileManager.default.enumerator(atPath: directory) else { return [] }
        var entries: [Entry] = []
        var total: UInt64 = 0
        while let relative = enumerator.nextObject() as? String {
            let path = (directory as NSString).appendingPathComponent(relative)
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            guard attributes[.type] as? FileAttributeType == .typeRegular else { continue }
            let size = (attributes[.size] as? NSNumber)?.uint64Value ?? 0
            total += size + 100 + UInt64(relative.utf8.count) * 2
            entries.append(Entry(name: root + "/" + relative, path: path, size: size,
                                 modified: attributes[.modificationDate] as? Date ?? Date()))
        }
        guard total < limit else {
            throw APIError(status: .contentTooLarge, error: "too_large",
                           detail: "the results are \(total / 1_048_576) MiB, more than a plain ZIP holds (4 GiB); copy them from the results directory instead")
        }
        return entries.sorted { $0.name < $1.name }
    }

    /// The response body: the archive of `entries`, written as it is read.
    static func body(_ entries: [Entry]) -> ResponseBody {
        ResponseBody { writer in
            var central = ByteBuffer()
            var offset: UInt32 = 0
            for entry in entries {
                guard let file = FileHandle(forReadingAtPath: entry.path) else {
                    throw APIError(status: .internalServerError, error: "internal", detail: "cannot read \(entry.name)")
                }
                defer { try? file.close() }
                let name = Array(entry.name.utf8)
                let (time, date) = dosTime(entry.modified)
                var header = ByteBuffer()
                header.writeInteger(UInt32(0x0403_4B50), endianness: .little)
                header.writeInteger(UInt16(20), endianness: .little)          // version needed: 2.0
                header.writeInteger(UInt16(0x0808), endianness: .little)      // data descriptor, UTF-8 names
                header.writeInteger(UInt16(0), endianness: .little)           // stored
                header.writeInteger(time, endianness: .little)
                header.writeInteger(date, endianness: .little)
                header.writeInteger(UInt32(0), endianness: .little)           // CRC-32, size: in the descriptor
                header.writeInteger(UInt32(0), endianness: .little)
                header.writeInteger(UInt32(0), endianness: .little)
                header.writeInteger(UInt16(name.count), endianness: .little)
                header.writeInteger(UInt16(0), endianness: .little)
                header.writeBytes(name)
                let headerSize = UInt32(header.readableBytes)
                try await writer.write(header)
                var crc = CRC32()
                var written: UInt64 = 0
                while true {
                    let data = try file.read(upToCount: chunkSize) ?? Data()
                    if data.isEmpty { break }
                    crc.update(data)
                    written += UInt64(data.count)
                    try await writer.write(ByteBuffer(bytes: data))
                }
                let size = UInt32(truncatingIfNeeded: written)
                var descriptor = ByteBuffer()
                descriptor.writeInteger(UInt32(0x0807_4B50), endianness: .little)
                descriptor.writeInteger(crc.value, endianness: .little)
                descriptor.writeInteger(size, endianness: .little)
                descriptor.writeInteger(size, endianness: .little)
                try await writer.write(descriptor)

                central.writeInteger(UInt32(0x0201_4B50), endianness: .little)
                central.writeInteger(UInt16(0x0314), endianness: .little)     // made by: Unix, 2.0
                central.writeInteger(UInt16(20), endianness: .little)
                central.writeInteger(UInt16(0x0808), endianness: .little)
                central.writeInteger(UInt16(0), endianness: .little)
                central.writeInteger(time, endianness: .little)
                central.writeInteger(date, endianness: .little)
                central.writeInteger(crc.value, endianness: .little)
                central.writeInteger(size, endianness: .little)
                central.writeInteger(size, endianness: .little)
                central.writeInteger(UInt16(name.count), endianness: .little)
                central.writeInteger(UInt16(0), endianness: .little)          // extra
                central.writeInteger(UInt16(0), endianness: .little)          // comment
                central.writeInteger(UInt16(0), endianness: .little)          // disk
                central.writeInteger(UInt16(0), endianness: .little)          // internal attributes
                central.writeInteger(UInt32(0o100644) << 16, endianness: .little) // a regular file, rw-r--r--
                central.writeInteger(offset, endianness: .little)
                central.writeBytes(name)
                offset += headerSize + size + 16
            }
            let centralSize = UInt32(central.readableBytes)
            central.writeInteger(UInt32(0x0605_4B50), endianness: .little)
            central.writeInteger(UInt16(0), endianness: .little)
            central.writeInteger(UInt16(0), endianness: .little)
            central.writeInteger(UInt16(entries.count), endianness: .little)
            central.writeInteger(UInt16(entries.count), endianness: .little)
            central.writeInteger(centralSize, endianness: .little)
            central.writeInteger(offset, endianness: .little)
            central.writeInteger(UInt16(0), endianness: .little)
            try await writer.write(central)
            try await writer.finish(nil)
        }
    }

    /// MS-DOS time and date (local time, 2-second resolution), as ZIP stores them.
    static func dosTime(_ date: Date) -> (UInt16, UInt16) {
        let parts = Calendar.current.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        let year = max(1980, parts.year ?? 1980)
        let time = UInt16((parts.hour ?? 0) << 11 | (parts.minute ?? 0) << 5 | (parts.second ?? 0) / 2)
        let day = UInt16((year - 1980) << 9 | (parts.month ?? 1) << 5 | (parts.day ?? 1))
        return (time, day)
    }
}

/// CRC-32 (IEEE 802.3, as ZIP uses it).
struct CRC32 {
    static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 == 1 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    private var state: UInt32 = 0xFFFF_FFFF

    var value: UInt32 { state ^ 0xFFFF_FFFF }

    mutating func update(_ data: Data) {
        var crc = state
        data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) in
            Self.table.withUnsafeBufferPointer { table in
                for byte in bytes {
                    crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
                }
            }
        }
        state = crc
    }
}
