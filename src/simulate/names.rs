//! Synthetic names: common surnames and given-name characters, combined at random.
//! Nothing here is a real person; village names are invented from syllables.

pub const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "赵", "马", "韩", "才", "索", "拉", "尕", "朱", "何", "罗",
    "冶", "祁", "鲁", "汪", "周", "吴", "徐", "孙", "胡", "郭", "林", "高", "梁", "郑",
];

pub const GIVEN: &[&str] = &[
    "明", "华", "英", "兰", "军", "平", "桂", "芳", "德", "文", "玉", "秀", "海", "生", "才", "措",
    "卓", "玛", "吉", "加", "旦", "草", "花", "福", "成", "忠", "贵", "宝", "珍", "梅",
];

pub const VILLAGE_SYLLABLES: &[&str] = &[
    "东", "西", "南", "北", "上", "下", "新", "河", "沟", "滩", "湾", "庄", "寨", "台", "岭", "尕",
    "日", "加", "拉", "巴", "卡", "隆", "多", "塘", "峡", "泉", "川", "堡", "岗", "源",
];
