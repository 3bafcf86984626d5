pub mod maildrop;
