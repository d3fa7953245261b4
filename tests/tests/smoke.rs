use septum_datapath::{Datapath, DatapathOptions};
#[test]
fn loads() {
    let dp = Datapath::load(&DatapathOptions::unpinned()).expect("load");
    let mut pkt = vec![0u8; 54];
    pkt[12] = 0x08; pkt[13] = 0x00; pkt[14] = 0x45; pkt[23] = 6;
    let r = dp.test_run("from_pod", &pkt, 1, 1).expect("run");
    println!("{r:?}");
}
