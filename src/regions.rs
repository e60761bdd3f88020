//! The county-level divisions guardline knows by name (Qinghai's 45, GB/T 2260, 2023 codes).
//!
//! Names are only used to make messages readable; a county code missing from this table is
//! still valid and is shown by its code.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::model::CountyCode;

const COUNTIES_CSV: &str = include_str!("../data/qinghai-counties.csv");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct County {
    pub code: CountyCode,
    pub name: &'static str,
    pub prefecture_code: u32,
    pub prefecture_name: &'static str,
}

fn table() -> &'static Vec<County> {
    static TABLE: OnceLock<Vec<County>> = OnceLock::new();
    TABLE.get_or_init(|| {
        COUNTIES_CSV
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut cols = line.split(',');
                let code = cols.next()?.parse().ok()?;
                let name = cols.next()?;
                let prefecture_code = cols.next()?.parse().ok()?;
                let prefecture_name = cols.next()?;
                Some(County {
                    code,
                    name,
                    prefecture_code,
                    prefecture_name,
                })
            })
            .collect()
    })
}

/// All known counties, in code order.
pub fn counties() -> &'static [County] {
    table()
}

pub fn county(code: CountyCode) -> Option<&'static County> {
    static INDEX: OnceLock<HashMap<CountyCode, usize>> = OnceLock::new();
    let index = INDEX.get_or_init(|| {
        table()
            .iter()
            .enumerate()
            .map(|(i, c)| (c.code, i))
            .collect()
    });
    index.get(&code).map(|&i| &table()[i])
}

/// The county's name, or its code when guardline does not know it.
pub fn county_name(code: CountyCode) -> String {
    county(code)
        .map(|c| c.name.to_string())
        .unwrap_or_else(|| code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_45_counties_of_qinghai() {
        assert_eq!(counties().len(), 45);
        let tongde = county("632522".parse().unwrap()).unwrap();
        assert_eq!(tongde.name, "同德县");
        assert_eq!(tongde.prefecture_name, "海南藏族自治州");
        assert_eq!(county_name("110101".parse().unwrap()), "110101");
    }
}
