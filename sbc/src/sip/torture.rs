//! The RFC 4475 and RFC 5118 torture messages as bytes, and what the sbc does with each (test
//! tables shared by the parser's unit tests and the end-to-end test `tests/tests/rfc4475.rs`, which
//! sends both through a running sbc).
//!
//! The RFC 4475 messages are its own (section 3, and its Appendix B archive), IETF Trust
//! material reproduced under the IETF Trust Legal Provisions. The RFC 5118 ones keep each
//! section's IPv6 references, Request-URI, Via, Contact and body on a common set of headers,
//! with a Call-ID and branch of their own so that a running sbc sees twelve transactions.

/// What the sbc does with a message, as a caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A request relayed to the backend with its meaning intact.
    Relayed,
    /// A request answered by the sbc with this status and reason phrase.
    Refused(u16, &'static str),
    /// A response (parsed; the relay matches it to a transaction or drops it).
    Response,
    /// Not parsed and not answered (counted as a parse error).
    Dropped,
}

/// One torture message.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The RFC's file name (`wsinv`).
    pub name: &'static str,
    /// The RFC section.
    pub section: &'static str,
    /// The section title.
    pub title: &'static str,
    /// The message's bytes.
    pub bytes: &'static [u8],
    /// What the sbc does with it.
    pub expect: Expect,
}

/// Every message of RFC 4475 section 3, in order.
pub const CASES: &[Case] = &[
    Case {
        name: "wsinv",
        section: "3.1.1.1",
        title: "A Short Tortuous INVITE",
        expect: Expect::Relayed,
        bytes: b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n\
TO :\r\n\
\x20sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n\
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n\
\x20 ;\r\n\
\x20 tag = 98asjd8\r\n\
MaX-fOrWaRdS: 0068\r\n\
Call-ID: wsinv.ndaksdj@192.0.2.1\r\n\
Content-Length   : 150\r\n\
cseq: 0009\r\n\
\x20 INVITE\r\n\
Via  : SIP  /   2.0\r\n\
\x20/UDP\r\n\
\x20   192.0.2.2;branch=390skdjuw\r\n\
s :\r\n\
NewFangledHeader:   newfangled value\r\n\
\x20continued newfangled value\r\n\
UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n\
Content-Type: application/sdp\r\n\
Route:\r\n\
\x20<sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n\
v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n\
\x20 branch  =   z9hG4bK9ikj8  ,\r\n\
\x20SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n\
\x20z9hG4bK30239\r\n\
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n\
\x20     newvalue ;\r\n\
\x20 secondparam ; q = 0.33\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.3\r\n\
s=-\r\n\
c=IN IP4 192.0.2.4\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "intmeth",
        section: "3.1.1.2",
        title: "Wide Range of Valid Characters",
        expect: Expect::Relayed,
        bytes: b"!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\r\n\
To: \"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\r\n\
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9\";tag=_token~1'+`*%!-.\r\n\
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\r\n\
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\r\n\
Max-Forwards: 255\r\n\
extensionHeader-!.%*+_`'~:\xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb\r\n\
Content-Length: 0\r\n\
\r\n",
    },
    Case {
        name: "esc01",
        section: "3.1.1.3",
        title: "Valid Use of the % Escaping Mechanism",
        expect: Expect::Relayed,
        bytes: b"INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0\r\n\
To: sip:%75se%72@example.com\r\n\
From: <sip:I%20have%20spaces@example.net>;tag=938\r\n\
Max-Forwards: 87\r\n\
i: esc01.239409asdfakjkn23onasd0-3234\r\n\
CSeq: 234234 INVITE\r\n\
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw\r\n\
C: application/sdp\r\n\
Contact:\r\n\
\x20 <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>\r\n\
Content-Length: 150\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n\
s=-\r\n\
c=IN IP4 192.0.2.1\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "escnull",
        section: "3.1.1.4",
        title: "Escaped Nulls in URIs",
        expect: Expect::Relayed,
        bytes: b"REGISTER sip:example.com SIP/2.0\r\n\
To: sip:null-%00-null@example.com\r\n\
From: sip:null-%00-null@example.com;tag=839923423\r\n\
Max-Forwards: 70\r\n\
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd\r\n\
CSeq: 14398234 REGISTER\r\n\
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\r\n\
Contact: <sip:%00@host5.example.com>\r\n\
Contact: <sip:%00%00@host5.example.com>\r\n\
L:0\r\n\
\r\n",
    },
    Case {
        name: "esc02",
        section: "3.1.1.5",
        title: "Use of % When It Is Not an Escape",
        expect: Expect::Relayed,
        bytes: b"RE%47IST%45R sip:registrar.example.com SIP/2.0\r\n\
To: \"%Z%45\" <sip:resource@example.com>\r\n\
From: \"%Z%45\" <sip:resource@example.com>;tag=f232jadfj23\r\n\
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf\r\n\
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234\r\n\
CSeq: 29344 RE%47IST%45R\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:alias1@host1.example.com>\r\n\
C%6Fntact: <sip:alias2@host2.example.com>\r\n\
Contact: <sip:alias3@host3.example.com>\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "lwsdisp",
        section: "3.1.1.6",
        title: "Message with No LWS between Display Name and <",
        expect: Expect::Relayed,
        bytes: b"OPTIONS sip:user@example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: caller<sip:caller@example.com>;tag=323\r\n\
Max-Forwards: 70\r\n\
Call-ID: lwsdisp.1234abcd@funky.example.com\r\n\
CSeq: 60 OPTIONS\r\n\
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "longreq",
        section: "3.1.1.7",
        title: "Long Values in Header Fields",
        expect: Expect::Relayed,
        bytes: b"INVITE sip:user@example.com SIP/2.0\r\n\
To: \"I have a user name of extremeextremeextremeextremeextremeextremeextremeextremeextremeextreme proportion\"<sip:user@example.com:6000;unknownparam1=verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongvalue;longparamnamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamename=shortvalue;verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongParameterNameWithNoValue>\r\n\
F: sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallername@example.net;tag=12982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982424;unknownheaderparamnamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamename=unknowheaderparamvaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevaluevalue;unknownValuelessparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamnameparamname\r\n\
Call-ID: longreq.onereallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreallylongcallid\r\n\
CSeq: 3882340 INVITE\r\n\
Unknown-LongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLong-Name: unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-value; unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-parameter-name = unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-parameter-value\r\n\
Via: SIP/2.0/TCP sip33.example.com\r\n\
v: SIP/2.0/TCP sip32.example.com\r\n\
V: SIP/2.0/TCP sip31.example.com\r\n\
Via: SIP/2.0/TCP sip30.example.com\r\n\
ViA: SIP/2.0/TCP sip29.example.com\r\n\
VIa: SIP/2.0/TCP sip28.example.com\r\n\
VIA: SIP/2.0/TCP sip27.example.com\r\n\
via: SIP/2.0/TCP sip26.example.com\r\n\
viA: SIP/2.0/TCP sip25.example.com\r\n\
vIa: SIP/2.0/TCP sip24.example.com\r\n\
vIA: SIP/2.0/TCP sip23.example.com\r\n\
V :  SIP/2.0/TCP sip22.example.com\r\n\
v :  SIP/2.0/TCP sip21.example.com\r\n\
V  : SIP/2.0/TCP sip20.example.com\r\n\
v  : SIP/2.0/TCP sip19.example.com\r\n\
Via : SIP/2.0/TCP sip18.example.com\r\n\
Via  : SIP/2.0/TCP sip17.example.com\r\n\
Via: SIP/2.0/TCP sip16.example.com\r\n\
Via: SIP/2.0/TCP sip15.example.com\r\n\
Via: SIP/2.0/TCP sip14.example.com\r\n\
Via: SIP/2.0/TCP sip13.example.com\r\n\
Via: SIP/2.0/TCP sip12.example.com\r\n\
Via: SIP/2.0/TCP sip11.example.com\r\n\
Via: SIP/2.0/TCP sip10.example.com\r\n\
Via: SIP/2.0/TCP sip9.example.com\r\n\
Via: SIP/2.0/TCP sip8.example.com\r\n\
Via: SIP/2.0/TCP sip7.example.com\r\n\
Via: SIP/2.0/TCP sip6.example.com\r\n\
Via: SIP/2.0/TCP sip5.example.com\r\n\
Via: SIP/2.0/TCP sip4.example.com\r\n\
Via: SIP/2.0/TCP sip3.example.com\r\n\
Via: SIP/2.0/TCP sip2.example.com\r\n\
Via: SIP/2.0/TCP sip1.example.com\r\n\
Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongbranchvalue\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylongcallername@host5.example.net>\r\n\
Content-Type: application/sdp\r\n\
l: 150\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n\
s=-\r\n\
c=IN IP4 192.0.2.1\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "dblreq",
        section: "3.1.1.8",
        title: "Extra Trailing Octets in a UDP Datagram",
        expect: Expect::Relayed,
        bytes: b"REGISTER sip:example.com SIP/2.0\r\n\
To: sip:j.user@example.com\r\n\
From: sip:j.user@example.com;tag=43251j3j324\r\n\
Max-Forwards: 8\r\n\
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412\r\n\
Contact: sip:j.user@host.example.com\r\n\
CSeq: 8 REGISTER\r\n\
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492\r\n\
Content-Length: 0\r\n\
\r\n\
\r\n\
INVITE sip:joe@example.com SIP/2.0\r\n\
t: sip:joe@example.com\r\n\
From: sip:caller@example.net;tag=141334\r\n\
Max-Forwards: 8\r\n\
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15\r\n\
CSeq: 8 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 150\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.15\r\n\
s=-\r\n\
c=IN IP4 192.0.2.15\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m =video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n\
\r\n",
    },
    Case {
        name: "semiuri",
        section: "3.1.1.9",
        title: "Semicolon-Separated Parameters in URI User Part",
        expect: Expect::Relayed,
        bytes: b"OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0\r\n\
To: sip:j_user@example.com\r\n\
From: sip:caller@example.org;tag=33242\r\n\
Max-Forwards: 3\r\n\
Call-ID: semiuri.0ha0isndaksdj\r\n\
CSeq: 8 OPTIONS\r\n\
Accept: application/sdp, application/pkcs7-mime,\r\n\
\x20       multipart/mixed, multipart/signed,\r\n\
\x20       message/sip, message/sipfrag\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "transports",
        section: "3.1.1.10",
        title: "Varied and Unknown Transport Types",
        expect: Expect::Relayed,
        bytes: b"OPTIONS sip:user@example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: <sip:caller@example.com>;tag=323\r\n\
Max-Forwards: 70\r\n\
Call-ID:  transports.kijh4akdnaqjkwendsasfdj\r\n\
Accept: application/sdp\r\n\
CSeq: 60 OPTIONS\r\n\
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw\r\n\
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf\r\n\
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj\r\n\
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en\r\n\
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "mpart01",
        section: "3.1.1.11",
        title: "Multipart MIME Message",
        expect: Expect::Relayed,
        bytes: b"MESSAGE sip:kumiko@example.org SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport\r\n\
Max-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5080>\r\n\
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=\r\n\
Contact: <sip:fluffy@127.0.0.1:5070>\r\n\
To: <sip:kumiko@example.org>\r\n\
From: <sip:fluffy@example.com>;tag=2fb0dcc9\r\n\
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..\r\n\
CSeq: 1 MESSAGE\r\n\
Content-Transfer-Encoding: binary\r\n\
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655\r\n\
Date: Sat, 15 Oct 2005 04:44:56 GMT\r\n\
User-Agent: SIPimp.org/0.2.5 (curses)\r\n\
Content-Length: 553\r\n\
\r\n\
--7a9cbec02ceef655\r\n\
Content-Type: text/plain\r\n\
Content-Transfer-Encoding: binary\r\n\
\r\n\
Hello\r\n\
--7a9cbec02ceef655\r\n\
Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: binary\r\n\
\r\n\
0\x82\x01R\x06\t*\x86H\x86\xf7\r\x01\x07\x02\xa0\x82\x01C0\x82\x01?\x02\x01\x011\t0\x07\x06\x05+\x0e\x03\x02\x1a0\x0b\x06\t*\x86H\x86\xf7\r\x01\x07\x011\x82\x01 0\x82\x01\x1c\x02\x01\x010|0p1\x0b0\t\x06\x03U\x04\x06\x13\x02US1\x130\x11\x06\x03U\x04\x08\x13\n\
California1\x110\x0f\x06\x03U\x04\x07\x13\x08San Jose1\x0e0\x0c\x06\x03U\x04\n\
\x13\x05sipit1)0'\x06\x03U\x04\x0b\x13 Sipit Test Certificate Authority\x02\x08\x01\x95\x00q\x023\x01\x130\x07\x06\x05+\x0e\x03\x02\x1a0\r\x06\t*\x86H\x86\xf7\r\x01\x01\x01\x05\x00\x04\x81\x80\x8e\xf4f\xf9H\xf0R-\xd2\xe5\x97\x8e\x9d\x95\xaa\xe9\xf2\xfe\x15\xa0fYqb\x92\xe8\xda*\xa8\xd85\n\
h\xce\xff\xae<\xbd+\xff\x16u\xdd\xd5d\x8eY=\xd6G(\xf2b \xf7\xe9At\x9e3\r\x9a\x15\xed\xab\xdb\x93\xd1\x0cB\x10.{r\x89\xd2\x9c\xc0\xc9\xae.\xfb\xc7\xc0\xcf\xf9\x17/;\x02~O\xc0'\xe1Tm\xe4\xb6\xaa:\xbb>f\xcc\xcb]\xd6\xc6K\x83\x83\x14\x9c\xb8\xe6\xff\x18-\x94O\xe5{e\xbc\x99\xd0\x05\r\n\
--7a9cbec02ceef655--\r\n",
    },
    Case {
        name: "unreason",
        section: "3.1.1.12",
        title: "Unusual Reason Phrase",
        expect: Expect::Response,
        bytes: b"SIP/2.0 200 = 2**3 * 5**2 \xd0\xbd\xd0\xbe \xd1\x81\xd1\x82\xd0\xbe \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd0\xbd\xd0\xbe\xd1\x81\xd1\x82\xd0\xbe \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd1\x82\xd1\x8c - \xd0\xbf\xd1\x80\xd0\xbe\xd1\x81\xd1\x82\xd0\xbe\xd0\xb5\r\n\
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\r\n\
Call-ID: unreason.1234ksdfak3j2erwedfsASdf\r\n\
CSeq: 35 INVITE\r\n\
From: sip:user@example.com;tag=11141343\r\n\
To: sip:user@example.edu;tag=2229\r\n\
Content-Length: 154\r\n\
Content-Type: application/sdp\r\n\
Contact: <sip:user@host198.example.com>\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.198\r\n\
s=-\r\n\
c=IN IP4 192.0.2.198\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "noreason",
        section: "3.1.1.13",
        title: "Empty Reason Phrase",
        expect: Expect::Response,
        bytes: b"SIP/2.0 100 \r\n\
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\r\n\
Call-ID: noreason.asndj203insdf99223ndf\r\n\
CSeq: 35 INVITE\r\n\
From: <sip:user@example.com>;tag=39ansfi3\r\n\
To: <sip:user@example.edu>;tag=902jndnke3\r\n\
Content-Length: 0\r\n\
Contact: <sip:user@host105.example.com>\r\n\
\r\n",
    },
    Case {
        name: "badinv01",
        section: "3.1.2.1",
        title: "Extraneous Header Field Separators",
        expect: Expect::Refused(400, "Empty Parameter in Via"),
        bytes: b"INVITE sip:user@example.com SIP/2.0\r\n\
To: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=134161461246\r\n\
Max-Forwards: 7\r\n\
Call-ID: badinv01.0ha0isndaksdjasdf3234nas\r\n\
CSeq: 8 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n\
Contact: \"Joe\" <sip:joe@example.org>;;;;\r\n\
Content-Length: 152\r\n\
Content-Type: application/sdp\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.15\r\n\
s=-\r\n\
c=IN IP4 192.0.2.15\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "clerr",
        section: "3.1.2.2",
        title: "Content Length Larger Than Message",
        expect: Expect::Refused(400, "Bad Content-Length"),
        bytes: b"INVITE sip:user@example.com SIP/2.0\r\n\
Max-Forwards: 80\r\n\
To: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=93942939o2\r\n\
Contact: <sip:caller@hungry.example.net>\r\n\
Call-ID: clerr.0ha0isndaksdjweiafasdk3\r\n\
CSeq: 8 INVITE\r\n\
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 9999\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.155\r\n\
s=-\r\n\
c=IN IP4 192.0.2.155\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "ncl",
        section: "3.1.2.3",
        title: "Negative Content-Length",
        expect: Expect::Refused(400, "Bad Content-Length"),
        bytes: b"INVITE sip:user@example.com SIP/2.0\r\n\
Max-Forwards: 254\r\n\
To: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=32394234\r\n\
Call-ID: ncl.0ha0isndaksdj2193423r542w35\r\n\
CSeq: 0 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw\r\n\
Contact: <sip:caller@example53.example.net>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: -999\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.53\r\n\
s=-\r\n\
c=IN IP4 192.0.2.53\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "scalar02",
        section: "3.1.2.4",
        title: "Request Scalar Fields with Overlarge Values",
        expect: Expect::Refused(400, "Bad CSeq"),
        bytes: b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\r\n\
To: <sip:user@example.com>\r\n\
From: <sip:user@example.com>;tag=239232jh3\r\n\
CSeq: 36893488147419103232 REGISTER\r\n\
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32\r\n\
Max-Forwards: 300\r\n\
Expires: 10000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\r\n\
Contact: <sip:user@host129.example.com>\r\n\
\x20 ;expires=280297596632815\r\n\
Content-Length: 0\r\n\
\r\n",
    },
    Case {
        name: "scalarlg",
        section: "3.1.2.5",
        title: "Response Scalar Fields with Overlarge Values",
        expect: Expect::Response,
        bytes: b"SIP/2.0 503 Service Unavailable\r\n\
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129\r\n\
To: <sip:user@example.com>\r\n\
From: <sip:other@example.net>;tag=2easdjfejw\r\n\
CSeq: 9292394834772304023312 OPTIONS\r\n\
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r\r\n\
Retry-After: 949302838503028349304023988\r\n\
Warning: 1812 overture \"In Progress\"\r\n\
Content-Length: 0\r\n\
\r\n",
    },
    Case {
        name: "quotbal",
        section: "3.1.2.6",
        title: "Unterminated Quoted String in Display Name",
        expect: Expect::Refused(400, "Unterminated Quoted String in To"),
        bytes: b"INVITE sip:user@example.com SIP/2.0\r\n\
To: \"Mr. J. User <sip:j.user@example.com>\r\n\
From: sip:caller@example.net;tag=93334\r\n\
Max-Forwards: 10\r\n\
Call-ID: quotbal.aksdj\r\n\
Contact: <sip:caller@host59.example.net>\r\n\
CSeq: 8 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 152\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.15\r\n\
s=-\r\n\
c=IN IP4 192.0.2.15\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "ltgtruri",
        section: "3.1.2.7",
        title: "<> Enclosing Request-URI",
        expect: Expect::Refused(400, "Bad Request-URI"),
        bytes: b"INVITE <sip:user@example.com> SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.net;tag=39291\r\n\
Max-Forwards: 23\r\n\
Call-ID: ltgtruri.1@192.0.2.5\r\n\
CSeq: 1 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.5\r\n\
Contact: <sip:caller@host5.example.net>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 159\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.5\r\n\
s=-\r\n\
c=IN IP4 192.0.2.5\r\n\
t=3149328700 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "lwsruri",
        section: "3.1.2.8",
        title: "Malformed SIP Request-URI (embedded LWS)",
        expect: Expect::Refused(400, "Whitespace in Request-URI"),
        bytes: b"INVITE sip:user@example.com; lr SIP/2.0\r\n\
To: sip:user@example.com;tag=3xfe-9921883-z9f\r\n\
From: sip:caller@example.net;tag=231413434\r\n\
Max-Forwards: 5\r\n\
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423\r\n\
CSeq: 2130706432 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395\r\n\
Contact: <sip:caller@host1.example.net>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 159\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n\
s=-\r\n\
c=IN IP4 192.0.2.1\r\n\
t=3149328700 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "lwsstart",
        section: "3.1.2.9",
        title: "Multiple SP Separating Request-Line Elements",
        expect: Expect::Refused(400, "Multiple Spaces in Request-Line"),
        bytes: b"INVITE  sip:user@example.com  SIP/2.0\r\n\
Max-Forwards: 8\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.net;tag=8814\r\n\
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com\r\n\
CSeq: 1893884 INVITE\r\n\
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923\r\n\
Contact: <sip:caller@host1.example.net>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 150\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n\
s=-\r\n\
c=IN IP4 192.0.2.1\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "trws",
        section: "3.1.2.10",
        title: "SP Characters at End of Request-Line",
        expect: Expect::Refused(400, "Trailing Whitespace in Request-Line"),
        bytes: b"OPTIONS sip:remote-target@example.com SIP/2.0  \r\n\
Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093\r\n\
To: <sip:remote-target@example.com>\r\n\
From: <sip:local-resource@example.com>;tag=329429089\r\n\
Call-ID: trws.oicu34958239neffasdhr2345r\r\n\
Accept: application/sdp\r\n\
CSeq: 238923 OPTIONS\r\n\
Max-Forwards: 70\r\n\
Content-Length: 0\r\n\
\r\n",
    },
    Case {
        name: "escruri",
        section: "3.1.2.11",
        title: "Escaped Headers in SIP Request-URI",
        expect: Expect::Refused(400, "Headers in Request-URI"),
        bytes: b"INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.net;tag=341518\r\n\
Max-Forwards: 7\r\n\
Contact: <sip:caller@host39923.example.net>\r\n\
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5\r\n\
CSeq: 149209342 INVITE\r\n\
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 150\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n\
s=-\r\n\
c=IN IP4 192.0.2.1\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "baddate",
        section: "3.1.2.12",
        title: "Invalid Time Zone in Date Header Field",
        expect: Expect::Relayed,
        bytes: b"INVITE sip:user@example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.net;tag=2234923\r\n\
Max-Forwards: 70\r\n\
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234\r\n\
CSeq: 1392934 INVITE\r\n\
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\r\n\
Date: Fri, 01 Jan 2010 16:00:00 EST\r\n\
Contact: <sip:caller@host5.example.net>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 150\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.5\r\n\
s=-\r\n\
c=IN IP4 192.0.2.5\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "regbadct",
        section: "3.1.2.13",
        title: "Failure to Enclose name-addr URI in <>",
        expect: Expect::Relayed,
        bytes: b"REGISTER sip:example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:user@example.com;tag=998332\r\n\
Max-Forwards: 70\r\n\
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1\r\n\
CSeq: 1 REGISTER\r\n\
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw\r\n\
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "badaspec",
        section: "3.1.2.14",
        title: "Spaces within addr-spec",
        expect: Expect::Relayed,
        bytes: b"OPTIONS sip:user@example.org SIP/2.0\r\n\
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234\r\n\
Max-Forwards: 70\r\n\
From: \"Bell, Alexander\" <sip:a.g.bell@example.com>;tag=433423\r\n\
To: \"Watson, Thomas\" < sip:t.watson@example.org >\r\n\
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3\r\n\
Accept: application/sdp\r\n\
CSeq: 3923239 OPTIONS\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "baddn",
        section: "3.1.2.15",
        title: "Non-token Characters in Display Name",
        expect: Expect::Refused(400, "Multiple From Values"),
        bytes: b"OPTIONS sip:t.watson@example.org SIP/2.0\r\n\
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw\r\n\
Max-Forwards:      70\r\n\
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43\r\n\
To:      Watson, Thomas <sip:t.watson@example.org>\r\n\
Call-ID: baddn.31415@c.example.com\r\n\
Accept: application/sdp\r\n\
CSeq:    3923239 OPTIONS\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "badvers",
        section: "3.1.2.16",
        title: "Unknown Protocol Version",
        expect: Expect::Refused(505, "Version Not Supported"),
        bytes: b"OPTIONS sip:t.watson@example.org SIP/7.0\r\n\
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\r\n\
Max-Forwards:     70\r\n\
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe\r\n\
To:      T. Watson <sip:t.watson@example.org>\r\n\
Call-ID: badvers.31417@c.example.com\r\n\
CSeq:    1 OPTIONS\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "mismatch01",
        section: "3.1.2.17",
        title: "Start Line and CSeq Method Mismatch",
        expect: Expect::Refused(400, "CSeq Method Mismatch"),
        bytes: b"OPTIONS sip:user@example.com SIP/2.0\r\n\
To: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=34525\r\n\
Max-Forwards: 6\r\n\
Call-ID: mismatch01.dj0234sxdfl3\r\n\
CSeq: 8 INVITE\r\n\
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "mismatch02",
        section: "3.1.2.18",
        title: "Unknown Method with CSeq Method Mismatch",
        expect: Expect::Refused(400, "CSeq Method Mismatch"),
        bytes: b"NEWMETHOD sip:user@example.com SIP/2.0\r\n\
To: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=34525\r\n\
Max-Forwards: 6\r\n\
Call-ID: mismatch02.dj0234sxdfl3\r\n\
CSeq: 8 INVITE\r\n\
Contact: <sip:caller@host.example.net>\r\n\
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw\r\n\
Content-Type: application/sdp\r\n\
l: 138\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n\
c=IN IP4 192.0.2.1\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "bigcode",
        section: "3.1.2.19",
        title: "Overlarge Response Code",
        expect: Expect::Dropped,
        bytes: b"SIP/2.0 4294967301 better not break the receiver\r\n\
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\r\n\
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i\r\n\
CSeq: 353494 INVITE\r\n\
From: <sip:user@example.com>;tag=39ansfi3\r\n\
To: <sip:user@example.edu>;tag=902jndnke3\r\n\
Content-Length: 0\r\n\
Contact: <sip:user@host105.example.com>\r\n\
\r\n",
    },
    Case {
        name: "badbranch",
        section: "3.2.1",
        title: "Missing Transaction Identifier",
        expect: Expect::Relayed,
        bytes: b"OPTIONS sip:user@example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.org;tag=33242\r\n\
Max-Forwards: 3\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK\r\n\
Accept: application/sdp\r\n\
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n\r\n\
CSeq: 8 OPTIONS\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "insuf",
        section: "3.3.1",
        title: "Missing Required Header Fields",
        expect: Expect::Refused(400, "Missing From"),
        bytes: b"INVITE sip:user@example.com SIP/2.0\r\n\
CSeq: 193942 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\r\n\
Content-Type: application/sdp\r\n\
l: 152\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.95\r\n\
s=-\r\n\
c=IN IP4 192.0.2.95\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "unkscm",
        section: "3.3.2",
        title: "Request-URI with Unknown Scheme",
        expect: Expect::Refused(416, "Unsupported URI Scheme"),
        bytes: b"OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.net;tag=384\r\n\
Max-Forwards: 3\r\n\
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34\r\n\
CSeq: 3923423 OPTIONS\r\n\
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234\r\n\
Content-Length: 0\r\n\
\r\n",
    },
    Case {
        name: "novelsc",
        section: "3.3.3",
        title: "Request-URI with Known but Atypical Scheme",
        expect: Expect::Refused(416, "Unsupported URI Scheme"),
        bytes: b"OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.net;tag=384\r\n\
Max-Forwards: 3\r\n\
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34\r\n\
CSeq: 3923423 OPTIONS\r\n\
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234\r\n\
Content-Length: 0\r\n\
\r\n",
    },
    Case {
        name: "unksm2",
        section: "3.3.4",
        title: "Unknown URI Schemes in Header Fields",
        expect: Expect::Relayed,
        bytes: b"REGISTER sip:example.com SIP/2.0\r\n\
To: isbn:2983792873\r\n\
From: <http://www.example.com>;tag=3234233\r\n\
Call-ID: unksm2.daksdj@hyphenated-host.example.com\r\n\
CSeq: 234902 REGISTER\r\n\
Max-Forwards: 70\r\n\
Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw\r\n\
Contact: <name:John_Smith>\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "bext01",
        section: "3.3.5",
        title: "Proxy-Require and Require",
        expect: Expect::Refused(420, "Bad Extension"),
        bytes: b"OPTIONS sip:user@example.com SIP/2.0\r\n\
To: sip:j_user@example.com\r\n\
From: sip:caller@example.net;tag=242etr\r\n\
Max-Forwards: 6\r\n\
Call-ID: bext01.0ha0isndaksdj\r\n\
Require: nothingSupportsThis, nothingSupportsThisEither\r\n\
Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis\r\n\
CSeq: 8 OPTIONS\r\n\
Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw\r\n\
Content-Length: 0\r\n\
\r\n",
    },
    Case {
        name: "invut",
        section: "3.3.6",
        title: "Unknown Content-Type",
        expect: Expect::Relayed,
        bytes: b"INVITE sip:user@example.com SIP/2.0\r\n\
Contact: <sip:caller@host5.example.net>\r\n\
To: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=8392034\r\n\
Max-Forwards: 70\r\n\
Call-ID: invut.0ha0isndaksdjadsfij34n23d\r\n\
CSeq: 235448 INVITE\r\n\
Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw\r\n\
Content-Type: application/unknownformat\r\n\
Content-Length: 40\r\n\
\r\n\
<audio>\r\n\
\x20<pcmu port=\"443\"/>\r\n\
</audio>\r\n",
    },
    Case {
        name: "regaut01",
        section: "3.3.7",
        title: "Unknown Authorization Scheme",
        expect: Expect::Relayed,
        bytes: b"REGISTER sip:example.com SIP/2.0\r\n\
To: sip:j.user@example.com\r\n\
From: sip:j.user@example.com;tag=87321hj23128\r\n\
Max-Forwards: 8\r\n\
Call-ID: regaut01.0ha0isndaksdj\r\n\
CSeq: 9338 REGISTER\r\n\
Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw\r\n\
Authorization: NoOneKnowsThisScheme opaque-data=here\r\n\
Content-Length:0\r\n\
\r\n",
    },
    Case {
        name: "multi01",
        section: "3.3.8",
        title: "Multiple Values in Single Value Required Fields",
        expect: Expect::Refused(400, "Multiple CSeq Headers"),
        bytes: b"INVITE sip:user@company.com SIP/2.0\r\n\
Contact: <sip:caller@host25.example.net>\r\n\
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw\r\n\
Max-Forwards: 70\r\n\
CSeq: 5 INVITE\r\n\
Call-ID: multi01.98asdh@192.0.2.1\r\n\
CSeq: 59 INVITE\r\n\
Call-ID: multi01.98asdh@192.0.2.2\r\n\
From: sip:caller@example.com;tag=3413415\r\n\
To: sip:user@example.com\r\n\
To: sip:other@example.net\r\n\
From: sip:caller@example.net;tag=2923420123\r\n\
Content-Type: application/sdp\r\n\
l: 154\r\n\
Contact: <sip:caller@host36.example.net>\r\n\
Max-Forwards: 5\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.25\r\n\
s=-\r\n\
c=IN IP4 192.0.2.25\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n\
\r\n",
    },
    Case {
        name: "mcl01",
        section: "3.3.9",
        title: "Multiple Content-Length Values",
        expect: Expect::Refused(400, "Multiple Content-Length Headers"),
        bytes: b"OPTIONS sip:user@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423\r\n\
To: sip:user@example.com\r\n\
From: sip:other@example.net;tag=3923942\r\n\
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf\r\n\
CSeq: 15932 OPTIONS\r\n\
Content-Length: 13\r\n\
Max-Forwards: 60\r\n\
Content-Length: 5\r\n\
Content-Type: text/plain\r\n\
\r\n\
There's no way to know how many octets are supposed to be here.\r\n\
\r\n",
    },
    Case {
        name: "bcast",
        section: "3.3.10",
        title: "200 OK Response with Broadcast Via Header Field Value",
        expect: Expect::Response,
        bytes: b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\r\n\
Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23\r\n\
Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf\r\n\
CSeq: 35 INVITE\r\n\
From: sip:user@example.com;tag=11141343\r\n\
To: sip:user@example.edu;tag=2229\r\n\
Content-Length: 154\r\n\
Content-Type: application/sdp\r\n\
Contact: <sip:user@host28.example.com>\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.198\r\n\
s=-\r\n\
c=IN IP4 192.0.2.198\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "zeromf",
        section: "3.3.11",
        title: "Max-Forwards of Zero",
        expect: Expect::Refused(483, "Too Many Hops"),
        bytes: b"OPTIONS sip:user@example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.net;tag=3ghsd41\r\n\
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas\r\n\
CSeq: 39234321 OPTIONS\r\n\
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i\r\n\
Max-Forwards: 0\r\n\
Content-Length: 0\r\n\
\r\n",
    },
    Case {
        name: "cparam01",
        section: "3.3.12",
        title: "REGISTER with a Contact Parameter",
        expect: Expect::Relayed,
        bytes: b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\r\n\
Max-Forwards: 70\r\n\
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe\r\n\
To: sip:watson@example.com\r\n\
Call-ID: cparam01.70710@saturn.example.com\r\n\
CSeq: 2 REGISTER\r\n\
Contact: sip:+19725552222@gw1.example.net;unknownparam\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "cparam02",
        section: "3.3.13",
        title: "REGISTER with a url Parameter",
        expect: Expect::Relayed,
        bytes: b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\r\n\
Max-Forwards: 70\r\n\
From: sip:watson@example.com;tag=838293\r\n\
To: sip:watson@example.com\r\n\
Call-ID: cparam02.70710@saturn.example.com\r\n\
CSeq: 3 REGISTER\r\n\
Contact: <sip:+19725552222@gw1.example.net;unknownparam>\r\n\
l: 0\r\n\
\r\n",
    },
    Case {
        name: "regescrt",
        section: "3.3.14",
        title: "REGISTER with a URL Escaped Header",
        expect: Expect::Relayed,
        bytes: b"REGISTER sip:example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:user@example.com;tag=8\r\n\
Max-Forwards: 70\r\n\
Call-ID: regescrt.k345asrl3fdbv@192.0.2.1\r\n\
CSeq: 14398234 REGISTER\r\n\
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\r\n\
M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>\r\n\
L:0\r\n\
\r\n",
    },
    Case {
        name: "sdp01",
        section: "3.3.15",
        title: "Unacceptable Accept Offering",
        expect: Expect::Relayed,
        bytes: b"INVITE sip:user@example.com SIP/2.0\r\n\
To: sip:j_user@example.com\r\n\
Contact: <sip:caller@host15.example.net>\r\n\
From: sip:caller@example.net;tag=234\r\n\
Max-Forwards: 5\r\n\
Call-ID: sdp01.ndaksdj9342dasdd\r\n\
Accept: text/nobodyKnowsThis\r\n\
CSeq: 8 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw\r\n\
Content-Length: 150\r\n\
Content-Type: application/sdp\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.5\r\n\
s=-\r\n\
c=IN IP4 192.0.2.5\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\n\
m=video 3227 RTP/AVP 31\r\n\
a=rtpmap:31 LPC\r\n",
    },
    Case {
        name: "inv2543",
        section: "3.4.1",
        title: "INVITE with RFC 2543 Syntax",
        expect: Expect::Relayed,
        bytes: b"INVITE sip:UserB@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP iftgw.example.com\r\n\
From: <sip:+13035551111@ift.client.example.net;user=phone>\r\n\
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>\r\n\
To: sip:+16505552222@ss1.example.net;user=phone\r\n\
Call-ID: inv2543.1717@ift.client.example.com\r\n\
CSeq: 56 INVITE\r\n\
Content-Type: application/sdp\r\n\
\r\n\
v=0\r\n\
o=mhandley 29739 7272939 IN IP4 192.0.2.5\r\n\
s=-\r\n\
c=IN IP4 192.0.2.5\r\n\
t=0 0\r\n\
m=audio 49217 RTP/AVP 0\r\n",
    },
];

/// An RFC 5118 message: its request line and the headers every case shares, with the case's
/// own Call-ID and Via, Contact and body.
macro_rules! v6 {
    ($line:literal, $method:literal, $name:literal, $via:literal, $contact:literal) => {
        v6!($line, $method, $name, $via, $contact, "", "0", "")
    };
    ($line:literal, $method:literal, $name:literal, $via:literal, $contact:literal,
     $ct:literal, $len:literal, $body:literal) => {
        concat!(
            $line,
            "\r\n",
            "To: sip:user@example.com\r\n",
            "From: sip:user@example.com;tag=81x2\r\n",
            "Via: ",
            $via,
            "\r\n",
            "Call-ID: ",
            $name,
            ".SSG9559905523997077@hlau_4100\r\n",
            "Max-Forwards: 70\r\n",
            "Contact: ",
            $contact,
            "\r\n",
            "CSeq: 98176 ",
            $method,
            "\r\n",
            $ct,
            "Content-Length: ",
            $len,
            "\r\n\r\n",
            $body
        )
        .as_bytes()
    };
}

/// Every message of RFC 5118 section 4, in order.
pub const RFC5118: &[Case] = &[
    Case {
        name: "ipv6-good",
        section: "4.1",
        title: "Valid SIP Message with an IPv6 Reference",
        expect: Expect::Relayed,
        bytes: v6!(
            "REGISTER sip:[2001:db8::10] SIP/2.0",
            "REGISTER",
            "ipv6-good",
            "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-ipv6-good",
            "\"Caller\" <sip:caller@[2001:db8::1]>"
        ),
    },
    Case {
        name: "ipv6-bad",
        section: "4.2",
        title: "Invalid SIP Message with an IPv6 Reference",
        expect: Expect::Refused(400, "Bad Request-URI"),
        bytes: v6!(
            "REGISTER sip:2001:db8::10 SIP/2.0",
            "REGISTER",
            "ipv6-bad",
            "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-ipv6-bad",
            "\"Caller\" <sip:caller@[2001:db8::1]>"
        ),
    },
    Case {
        name: "port-ambiguous",
        section: "4.3",
        title: "Port Ambiguous in a SIP URI",
        expect: Expect::Relayed,
        bytes: v6!(
            "REGISTER sip:[2001:db8::10:5070] SIP/2.0",
            "REGISTER",
            "port-ambiguous",
            "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-port-ambiguous",
            "\"Caller\" <sip:caller@[2001:db8::1]>"
        ),
    },
    Case {
        name: "port-unambiguous",
        section: "4.4",
        title: "Port Unambiguous in a SIP URI",
        expect: Expect::Relayed,
        bytes: v6!(
            "REGISTER sip:[2001:db8::10]:5070 SIP/2.0",
            "REGISTER",
            "port-unambiguous",
            "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-port-unambiguous",
            "\"Caller\" <sip:caller@[2001:db8::1]>"
        ),
    },
    Case {
        name: "via-received-param-with-delim",
        section: "4.5",
        title: "IPv6 Reference Delimiters in Via Header (received with brackets)",
        expect: Expect::Relayed,
        bytes: v6!(
            "OPTIONS sip:[2001:db8::10] SIP/2.0",
            "OPTIONS",
            "via-received-param-with-delim",
            "SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3-with-delim",
            "\"Caller\" <sip:caller@[2001:db8::1]>"
        ),
    },
    Case {
        name: "via-received-param-no-delim",
        section: "4.5",
        title: "IPv6 Reference Delimiters in Via Header (received without brackets)",
        expect: Expect::Relayed,
        bytes: v6!(
            "OPTIONS sip:[2001:db8::10] SIP/2.0",
            "OPTIONS",
            "via-received-param-no-delim",
            "SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3-no-delim",
            "\"Caller\" <sip:caller@[2001:db8::1]>"
        ),
    },
    Case {
        name: "ipv6-in-sdp",
        section: "4.6",
        title: "SIP Request with IPv6 Addresses in Session Description Protocol (SDP) Body",
        expect: Expect::Relayed,
        bytes: v6!(
            "INVITE sip:user@[2001:db8::10] SIP/2.0",
            "INVITE",
            "ipv6-in-sdp",
            "SIP/2.0/UDP [2001:db8::20];branch=z9hG4bKas3-ipv6-in-sdp",
            "\"Caller\" <sip:caller@[2001:db8::20]>",
            "Content-Type: application/sdp\r\n",
            "251",
            "v=0\r\no=assistant 971731711378798081 0 IN IP6 2001:db8::20\r\n\
s=Live video feed for today's meeting\r\nc=IN IP6 2001:db8::20\r\n\
t=3338481189 3370017201\r\nm=audio 6000 RTP/AVP 2\r\na=rtpmap:2 G726-32/8000\r\n\
m=video 6024 RTP/AVP 107\r\na=rtpmap:107 H263-1998/90000\r\n"
        ),
    },
    Case {
        name: "mult-ip-in-header",
        section: "4.7",
        title: "Multiple IP Addresses in SIP Headers",
        expect: Expect::Relayed,
        bytes: v6!(
            "BYE sip:user@host.example.net SIP/2.0",
            "BYE",
            "mult-ip-in-header",
            "SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-mult-ip-in-header, \
SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144, \
SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200",
            "<sip:caller@[2001:db8::9:1]:6050>"
        ),
    },
    Case {
        name: "mult-ip-in-sdp",
        section: "4.8",
        title: "Multiple IP Addresses in SDP",
        expect: Expect::Relayed,
        bytes: v6!(
            "INVITE sip:user@[2001:db8::10] SIP/2.0",
            "INVITE",
            "mult-ip-in-sdp",
            "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-mult-ip-in-sdp",
            "\"Caller\" <sip:caller@[2001:db8::1]>",
            "Content-Type: application/sdp\r\n",
            "189",
            "v=0\r\no=bob 280744730 28977631 IN IP4 host.example.com\r\ns=\r\nt=0 0\r\n\
m=audio 22334 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\nm=video 6024 RTP/AVP 107\r\n\
c=IN IP6 2001:db8::1\r\na=rtpmap:107 H263-1998/90000\r\n"
        ),
    },
    Case {
        name: "ipv4-mapped-ipv6",
        section: "4.9",
        title: "IPv4-Mapped IPv6 Addresses",
        expect: Expect::Relayed,
        bytes: v6!(
            "INVITE sip:user@example.com SIP/2.0",
            "INVITE",
            "ipv4-mapped-ipv6",
            "SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19",
            "\"T. desk phone\" <sip:ted@[::ffff:192.0.2.10]:19823>"
        ),
    },
    Case {
        name: "ipv6-correct-abnf-2-colons",
        section: "4.10",
        title: "IPv6 Reference Bug in RFC 3261 ABNF (two colons)",
        expect: Expect::Relayed,
        bytes: v6!(
            "REGISTER sip:user@[2001:db8::192.0.2.1] SIP/2.0",
            "REGISTER",
            "ipv6-correct-abnf-2-colons",
            "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-2-colons",
            "\"Caller\" <sip:caller@[2001:db8::1]>"
        ),
    },
    Case {
        name: "ipv6-bug-abnf-3-colons",
        section: "4.10",
        title: "IPv6 Reference Bug in RFC 3261 ABNF (three colons)",
        expect: Expect::Relayed,
        bytes: v6!(
            "REGISTER sip:user@[2001:db8:::192.0.2.1] SIP/2.0",
            "REGISTER",
            "ipv6-bug-abnf-3-colons",
            "SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-3-colons",
            "\"Caller\" <sip:caller@[2001:db8::1]>"
        ),
    },
];
