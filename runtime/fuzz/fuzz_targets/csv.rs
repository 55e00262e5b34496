//! The CSV reader never panics on any bytes, read as the CSV loads read them (flexible rows, a
//! header row, records as bytes, text made UTF-8 lossily).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .buffer_capacity(1 << 16)
        .from_reader(data);
    let Ok(header) = reader.byte_headers() else {
        return;
    };
    let columns = header.len();
    let mut record = csv::ByteRecord::new();
    while let Ok(true) = reader.read_byte_record(&mut record) {
        for cell in record.iter().take(columns) {
            let _ = String::from_utf8_lossy(cell);
        }
    }
});
